//! Talking to a container's network namespace from the host: a dedicated
//! thread `setns`es into it and speaks plain HTTP/1.1 over loopback there,
//! so tests never need an address outside the container.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};

/// An HTTP response as received.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// The network namespace of process `pid`.
pub fn netns_of(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// Runs `f` on a thread inside the network namespace at `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: PathBuf,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || -> Result<T> {
        let file =
            std::fs::File::open(&netns).with_context(|| format!("open {}", netns.display()))?;
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("netns thread panicked"))?
}

/// `GET path` on `addr` inside `netns`, retrying connection refusals until
/// `timeout` (the server may still be starting).
pub fn http_get(
    netns: PathBuf,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse> {
    let path = path.to_string();
    in_netns(netns, move || http_get_here(addr, &path, timeout))
}

/// `GET path` on `addr` from the calling thread's network namespace (e.g.
/// the host's, to a pod's IP), retrying connection failures until
/// `timeout`.
pub fn http_get_here(addr: SocketAddr, path: &str, timeout: Duration) -> Result<HttpResponse> {
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => bail!("connect to {addr}: {e}"),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(HttpResponse { status, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A network namespace made by the harness with loopback up, as the CRI
/// plugin and CNI's `loopback` plugin make a pod's. Pinned by a bind mount
/// on a file in a temp dir; unmounted on drop.
pub struct NetNs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NetNs {
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("wasmhybrid-netns-")
            .tempdir()?;
        let path = dir.path().join("net");
        std::fs::File::create(&path)?;
        let target = path.clone();
        std::thread::spawn(move || -> Result<()> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
            loopback_up()?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .context("pin netns with a bind mount")?;
            Ok(())
        })
        .join()
        .map_err(|_| anyhow!("netns thread panicked"))??;
        Ok(Self { path, _dir: dir })
    }

    pub fn path(&self) -> PathBuf {
        self.path.clone()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Sets `lo` up in the calling thread's network namespace.
fn loopback_up() -> Result<()> {
    // SAFETY: plain ioctls on a socket we own, with a zeroed, NUL-terminated
    // `ifreq` naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let ok = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 && {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) == 0
        };
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if !ok {
            bail!("bring lo up: {err}");
        }
    }
    Ok(())
}
