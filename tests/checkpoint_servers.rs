//! Real servers from Debian's packages, none of them ours, each loaded with data in a lab
//! container on host-a, checkpointed, restored on host-b and then asked by its own client
//! from the lab's `client` namespace whether everything is still there: redis-server with
//! a million keys, nginx (a master and two workers), memcached, PostgreSQL, node.
//! `scripts/install-deps` installs them.

mod support;

use std::time::Duration;

use anyhow::{Context, ensure};
use support::{TempDir, TestLab, wait_until};

/// The container's address on the lab's LAN.
fn ip(lab: &TestLab, name: &str) -> anyhow::Result<String> {
    let c = lab.container(name)?;
    c["ip"].as_str().map(str::to_string).with_context(|| format!("{name} has no ip: {c}"))
}

/// Runs `CMD…` in the lab's client namespace; requires success, returns stdout.
fn client(lab: &TestLab, cmd: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["lab", "exec", "client", "--"];
    args.extend_from_slice(cmd);
    lab.ok(&args)
}

/// Waits until `cmd`, run in the client namespace, prints something containing `want`.
fn wait_client(lab: &TestLab, cmd: &[&str], want: &str) -> anyhow::Result<()> {
    let ok = wait_until(Duration::from_secs(30), || client(lab, cmd).is_ok_and(|o| o.contains(want)));
    ensure!(ok, "{} never answered {want:?}: {:?}", cmd.join(" "), client(lab, cmd));
    Ok(())
}

/// Writes the redis protocol for `SET key:N value:N` for N in 0..count.
const REDIS_LOAD: &str = r#"
import sys
n = int(sys.argv[1])
out = sys.stdout.buffer
for start in range(0, n, 10000):
    chunk = []
    for i in range(start, min(n, start + 10000)):
        k, v = b"key:%d" % i, b"value:%d" % i
        chunk.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
    out.write(b"".join(chunk))
"#;

#[test]
fn redis_with_a_million_keys_moves_and_goes_on_serving() -> anyhow::Result<()> {
    let img = TempDir::new("redis-img")?;
    let lab = TestLab::up(2)?;
    // No persistence of its own (the image carries the data); its few clients need few fds.
    let cmd = ["redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no"];
    lab.start("host-a", "redis", &[&cmd[..], &["--maxclients", "64", "--dir", "/run"]].concat())?;
    let addr = ip(&lab, "redis")?;
    let cli = |args: &[&str]| {
        let mut c = vec!["redis-cli", "-h", addr.as_str()];
        c.extend_from_slice(args);
        client(&lab, &c)
    };
    wait_client(&lab, &["redis-cli", "-h", &addr, "ping"], "PONG")?;
    let load = format!("python3 -c '{REDIS_LOAD}' 1000000 | redis-cli -h {addr} --pipe");
    let loaded = client(&lab, &["sh", "-c", &load])?;
    ensure!(loaded.contains("errors: 0, replies: 1000000"), "loading redis: {loaded}");
    ensure!(cli(&["dbsize"])?.trim() == "1000000", "dbsize before: {}", cli(&["dbsize"])?);

    let image = img.join("redis");
    lab.checkpoint_and_restore("redis", &image, "host-b")?;
    let inspect = lab.ok(&["inspect", &image])?;
    ensure!(inspect.contains("6379"), "inspect does not show the listening socket: {inspect}");
    ensure!(inspect.to_lowercase().contains("epoll"), "inspect does not show the epoll: {inspect}");

    // The same data, answered from host-b.
    ensure!(cli(&["dbsize"])?.trim() == "1000000", "dbsize after: {}", cli(&["dbsize"])?);
    for i in [0, 1, 4242, 500_000, 999_999] {
        let got = cli(&["get", &format!("key:{i}")])?;
        ensure!(got.trim() == format!("value:{i}"), "key:{i} is {got:?} after the move");
    }
    ensure!(cli(&["set", "after", "move"])?.trim() == "OK", "a new write after the move");
    ensure!(cli(&["get", "after"])?.trim() == "move", "reading the new write");
    // A forked child (BGSAVE) of the restored server writes a complete dump.
    ensure!(cli(&["bgsave"])?.contains("Background saving started"), "bgsave");
    let saved = wait_until(Duration::from_secs(60), || {
        cli(&["info", "persistence"])
            .is_ok_and(|i| i.contains("rdb_bgsave_in_progress:0") && i.contains("rdb_last_bgsave_status:ok"))
    });
    ensure!(saved, "BGSAVE did not complete: {}", cli(&["info", "persistence"])?);
    ensure!(cli(&["lastsave"])?.trim() != "0", "no save recorded");
    lab.down_expecting(&["redis"])?;
    Ok(())
}

#[test]
fn nginx_master_and_workers_move_serve_and_reload() -> anyhow::Result<()> {
    let work = TempDir::new("nginx")?;
    let img = TempDir::new("nginx-img")?;
    let (www, tmp, conf) = (work.join("www"), work.join("tmp"), work.join("nginx.conf"));
    std::fs::create_dir_all(&www)?;
    std::fs::create_dir_all(&tmp)?;
    std::fs::write(work.path.join("www/index.html"), "served by nginx\n")?;
    std::fs::write(&conf, support::nginx_conf(&www, &tmp))?;
    let lab = TestLab::up(2)?;
    lab.start("host-a", "nginx", &["nginx", "-c", &conf])?;
    let url = format!("http://{}/", ip(&lab, "nginx")?);
    lab.wait_log("nginx", "start worker process 3")?;
    wait_client(&lab, &["curl", "-sS", &url], "served by nginx")?;

    let image = img.join("nginx");
    lab.checkpoint_and_restore("nginx", &image, "host-b")?;
    // Many requests, so that both workers answer some.
    for _ in 0..20 {
        let body = client(&lab, &["curl", "-sS", "--max-time", "5", &url])?;
        ensure!(body == "served by nginx\n", "after the move nginx answered {body:?}");
    }
    // The master still commands its workers: a reload starts new ones, which serve.
    std::fs::write(work.path.join("www/index.html"), "reloaded\n")?;
    lab.ok(&["exec", "nginx", "--", "nginx", "-c", &conf, "-s", "reload"])?;
    // Two workers started after the master reconfigured (the log holds the first ones too).
    let new_workers = |log: &str| {
        log.contains("reconfiguring")
            && log
                .rsplit("reconfiguring")
                .next()
                .is_some_and(|after| after.matches("start worker process").count() >= 2)
    };
    let reloaded = wait_until(Duration::from_secs(30), || lab.logs("nginx").is_ok_and(|l| new_workers(&l)));
    ensure!(reloaded, "no new workers after the reload: {}", lab.logs("nginx")?);
    wait_client(&lab, &["curl", "-sS", &url], "reloaded")?;
    lab.down_expecting(&["nginx"])?;
    Ok(())
}

/// Sets `count` keys over memcached's text protocol (`set`), or checks them (`get`), and
/// prints `ok N`.
const MEMCACHED_CLIENT: &str = r#"
import socket, sys
host, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.create_connection((host, 11211), timeout=10)
f = s.makefile("rwb")
good = 0
for i in range(count):
    k, v = b"k%d" % i, b"v%d-%s" % (i, b"x" * (i % 300))
    if mode == "set":
        f.write(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v)); f.flush()
        good += f.readline() == b"STORED\r\n"
    else:
        f.write(b"get %s\r\n" % k); f.flush()
        head = f.readline()
        if head.startswith(b"VALUE"):
            got = f.readline()[:-2]; f.readline()
            good += got == v
print("ok", good)
"#;

#[test]
fn memcached_keeps_its_items_and_threads_after_a_move() -> anyhow::Result<()> {
    let img = TempDir::new("memcached-img")?;
    let lab = TestLab::up(2)?;
    lab.start("host-a", "mc", &["memcached", "-u", "root", "-m", "64", "-c", "64", "-t", "4"])?;
    let addr = ip(&lab, "mc")?;
    let run = |mode: &str, n: &str| client(&lab, &["python3", "-c", MEMCACHED_CLIENT, &addr, mode, n]);
    let ready = wait_until(Duration::from_secs(30), || run("set", "1").is_ok());
    ensure!(ready, "memcached does not answer: {:?}", run("set", "1"));
    ensure!(run("set", "5000")?.trim() == "ok 5000", "setting 5000 items");

    let image = img.join("mc");
    lab.checkpoint_and_restore("mc", &image, "host-b")?;
    ensure!(run("get", "5000")?.trim() == "ok 5000", "items after the move: {}", run("get", "5000")?);
    ensure!(run("set", "6000")?.trim() == "ok 6000", "new sets after the move");
    ensure!(run("get", "6000")?.trim() == "ok 6000", "reading the new items");
    lab.down_expecting(&["mc"])?;
    Ok(())
}

#[test]
fn postgresql_moves_idle_and_answers_queries_and_inserts() -> anyhow::Result<()> {
    let work = TempDir::new("pg")?;
    let img = TempDir::new("pg-img")?;
    let (data, sock) = (work.join("data"), work.join("sock"));
    let bin = "/usr/lib/postgresql/15/bin";
    std::fs::create_dir_all(&data)?;
    std::fs::create_dir_all(&sock)?;
    for d in [&data, &sock] {
        std::process::Command::new("chown").args(["postgres:postgres", d]).status()?;
    }
    let init = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{bin}/initdb"), "-D", &data, "-A", "trust"])
        .output()?;
    ensure!(init.status.success(), "initdb: {}", String::from_utf8_lossy(&init.stderr));
    // The lab's client reaches it over the LAN.
    let hba = std::path::Path::new(&data).join("pg_hba.conf");
    let mut rules = std::fs::read_to_string(&hba)?;
    rules.push_str("host all all 10.77.0.0/16 trust\n");
    std::fs::write(&hba, rules)?;

    let lab = TestLab::up(2)?;
    let postgres = format!("{bin}/postgres");
    let cmd = ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups", "--", &postgres];
    let opts = ["-D", &data, "-k", &sock, "-c", "listen_addresses=*", "-c", "max_connections=20"];
    lab.start("host-a", "pg", &[&cmd[..], &opts[..], &["-c", "shared_buffers=16MB"]].concat())?;
    let addr = ip(&lab, "pg")?;
    let sql = |q: &str| client(&lab, &["psql", "-h", &addr, "-U", "postgres", "-At", "-c", q]);
    let ready = wait_until(Duration::from_secs(30), || sql("select 1").is_ok_and(|o| o.trim() == "1"));
    ensure!(ready, "postgres does not answer: {:?}", sql("select 1"));
    sql("create table t (id int primary key, v text)")?;
    sql("insert into t select i, md5(i::text) from generate_series(1, 10000) i")?;
    // Idle: no client connected at the checkpoint.
    let image = img.join("pg");
    lab.checkpoint_and_restore("pg", &image, "host-b")?;
    ensure!(sql("select count(*) from t")?.trim() == "10000", "rows after the move");
    let row = sql("select v from t where id = 4242")?;
    ensure!(row.trim() == "fe7ecc4de28b2c83c016b5c6c2acd826", "row 4242 after the move: {row:?}");
    sql("insert into t select i, md5(i::text) from generate_series(10001, 12000) i")?;
    ensure!(sql("select count(*) from t")?.trim() == "12000", "rows after inserting on host-b");
    // Its unix socket answers too, from inside the container.
    let local = lab.ok(&[
        "exec",
        "pg",
        "--",
        "psql",
        "-h",
        &sock,
        "-U",
        "postgres",
        "-At",
        "-c",
        "select count(*) from t",
    ])?;
    ensure!(local.trim() == "12000", "through the unix socket: {local}");
    lab.ok(&["exec", "pg", "--", "psql", "-h", &sock, "-U", "postgres", "-c", "checkpoint"])?;
    lab.down_expecting(&["pg"])?;
    Ok(())
}

const NODE_SERVER: &str = r#"
const http = require('http');
let hits = 0;
setInterval(() => {}, 1000);
http.createServer((q, r) => { hits += 1; r.end(`node hit ${hits}\n`); })
  .listen(8080, () => console.log('listening'));
"#;

#[test]
fn a_node_http_server_counts_on_after_a_move() -> anyhow::Result<()> {
    let img = TempDir::new("node-img")?;
    let lab = TestLab::up(2)?;
    lab.start("host-a", "node", &["node", "-e", NODE_SERVER])?;
    lab.wait_log("node", "listening")?;
    let url = format!("http://{}:8080/", ip(&lab, "node")?);
    wait_client(&lab, &["curl", "-sS", &url], "node hit")?;
    let before = client(&lab, &["curl", "-sS", &url])?;
    let n: u32 = before.trim().trim_start_matches("node hit ").parse().context("hits")?;
    let image = img.join("node");
    lab.checkpoint_and_restore("node", &image, "host-b")?;
    // Its memory came along: the counter goes on from where it was.
    let after = client(&lab, &["curl", "-sS", "--max-time", "5", &url])?;
    ensure!(after.trim() == format!("node hit {}", n + 1), "after the move node answered {after:?}");
    lab.down_expecting(&["node"])?;
    Ok(())
}
