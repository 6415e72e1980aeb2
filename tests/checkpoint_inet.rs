//! TCP listeners and UDP sockets moved to another host: they listen, receive and send
//! again at the container's address, with every option as it was; established TCP
//! connections are refused by name, and the container goes on serving.

mod support;

use anyhow::ensure;
use support::{TempDir, TestLab};

/// The README's example: python's own HTTP server (a listener on `0.0.0.0`, backlog 5),
/// moved, serves the lab's client a page from the container's address.
#[test]
fn python_http_server_serves_after_the_move() -> anyhow::Result<()> {
    let site = TempDir::new("inet-site")?;
    let img = TempDir::new("inet-http-img")?;
    std::fs::write(site.path.join("page.txt"), b"moved and serving\n")?;
    let lab = TestLab::up(2)?;
    let cmd = ["python3", "-u", "-m", "http.server", "8000", "--directory", &site.join("")];
    let mut args = vec!["run", "--host", "host-a", "--name", "web", "--ip", "10.77.1.20", "--"];
    args.extend_from_slice(&cmd);
    lab.ok(&args)?;
    lab.wait_log("web", "Serving HTTP")?;
    ensure!(lab.http_get_from_client("http://10.77.1.20:8000/page.txt")? == "moved and serving\n");
    let image = img.join("web");
    lab.checkpoint_and_restore("web", &image, "host-b")?;
    let inspect = lab.ok(&["inspect", &image])?;
    ensure!(
        inspect.contains("TCP listening on 0.0.0.0:8000 (backlog 5, reuseaddr)"),
        "inspect does not show the listener: {inspect}"
    );
    ensure!(lab.http_get_from_client("http://10.77.1.20:8000/page.txt")? == "moved and serving\n");
    lab.ok(&["stop", "web"])?;
    lab.down_expecting(&[])?;
    Ok(())
}
