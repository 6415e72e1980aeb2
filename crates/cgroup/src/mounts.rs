//! Where the cgroup hierarchies are mounted, read from `/proc/self/mountinfo` (parsed by
//! procfs-core; mount points are unescaped here, which procfs-core does not do).

use std::collections::BTreeMap;
use std::path::PathBuf;

use procfs_core::FromRead;
use procfs_core::process::MountInfos;

use crate::CgroupError;

/// The v1 controllers; the other super options of a v1 mount (`rw`, `xattr`,
/// `name=systemd`, `clone_children`, …) are not controllers.
const V1_CONTROLLERS: [&str; 14] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "blkio",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// The cgroup mounts of this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mounts {
    /// The cgroup2 mount (on a hybrid host, e.g. `/sys/fs/cgroup/unified`).
    pub v2: Option<PathBuf>,
    /// Each v1 controller and the mount of its hierarchy.
    pub v1: BTreeMap<String, PathBuf>,
}

impl Mounts {
    /// Reads the mounts of the calling process's mount namespace.
    pub fn discover() -> Result<Mounts, CgroupError> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
        Mounts::parse(&text)
    }

    /// Parses mountinfo text (see proc(5)): `id parent maj:min root mountpoint opts
    /// [optional fields] - fstype source superopts`.
    pub fn parse(text: &str) -> Result<Mounts, CgroupError> {
        let infos = MountInfos::from_read(text.as_bytes()).map_err(|e| {
            CgroupError::MountInfo(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
        })?;
        let mut mounts = Mounts::default();
        // A bind mount of a sub-cgroup is not the hierarchy's root.
        for info in infos.iter().filter(|m| m.root == "/") {
            let mountpoint = PathBuf::from(unescape(&info.mount_point.to_string_lossy()));
            match info.fs_type.as_str() {
                "cgroup2" if mounts.v2.is_none() => mounts.v2 = Some(mountpoint),
                "cgroup" => {
                    for opt in info.super_options.keys().filter(|o| V1_CONTROLLERS.contains(&o.as_str())) {
                        mounts.v1.entry(opt.to_string()).or_insert_with(|| mountpoint.clone());
                    }
                }
                _ => {}
            }
        }
        Ok(mounts)
    }

    /// The controllers available in the v2 hierarchy (its root's `cgroup.controllers`).
    pub fn v2_controllers(&self) -> Vec<String> {
        self.v2
            .as_ref()
            .and_then(|root| std::fs::read_to_string(root.join("cgroup.controllers")).ok())
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Where `controller` lives: `("v2", mount)` or `("v1", mount)`, if anywhere.
    pub fn controller(&self, controller: &str) -> Option<(&'static str, PathBuf)> {
        if self.v2_controllers().iter().any(|c| c == controller) {
            return self.v2.clone().map(|p| ("v2", p));
        }
        self.v1.get(controller).map(|p| ("v1", p.clone()))
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'\\' && i + 3 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 4]).ok().and_then(|o| u8::from_str_radix(o, 8).ok()))
            .flatten();
        if let Some(v) = escaped {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime shared:9 - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 23 0:38 /some/sub /mnt/bind\\040dir rw - cgroup2 cgroup2 rw";

    #[test]
    fn hybrid_host() -> Result<(), CgroupError> {
        let m = Mounts::parse(HYBRID)?;
        assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(m.v1.get("memory"), Some(&PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(m.v1.get("pids"), Some(&PathBuf::from("/sys/fs/cgroup/pids")));
        assert_eq!(m.v1.get("cpuacct"), Some(&PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")));
        assert!(!m.v1.contains_key("xattr") && !m.v1.contains_key("name=systemd"));
        assert!(Mounts::parse("31 23 0:28 / /sys/fs/cgroup rw,relatime tmpfs").is_err());
        Ok(())
    }

    #[test]
    fn escaped_mountpoint() {
        assert_eq!(unescape("/mnt/bind\\040dir"), "/mnt/bind dir");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trailing\\"), "/trailing\\");
        assert_eq!(unescape("/ü\\é"), "/ü\\é");
    }
}
