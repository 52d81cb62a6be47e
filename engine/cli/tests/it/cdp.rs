//! Just enough of the Chrome DevTools Protocol, over a WebSocket written with std alone, to
//! drive the console like a person: open a page, type, click, and read what it shows. The
//! DOM-dump tests (`console.rs`) read views; these act through them.
//!
//! Chromium listens on a port it picks (`--remote-debugging-port=0`) and writes it to
//! `DevToolsActivePort` in its profile. One WebSocket to the browser, one page target attached
//! in flat mode, and `Runtime.evaluate` for everything else.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// How every console test runs Chromium: headless, in a container (no sandbox, no GPU, a
/// small /dev/shm), and with nothing that phones home or writes crash dumps.
pub(crate) const HEADLESS: [&str; 7] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-crash-reporter",
    "--disable-breakpad",
];

/// Bounds against a hung browser or page, not timing assertions.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// A headless Chromium with one page.
pub(crate) struct Page {
    ws: WebSocket,
    // Dropped last: the browser goes only after the connection to it.
    _browser: Browser,
    session: String,
    next_id: u64,
}

impl Page {
    /// Starts the browser with a fresh profile in `profile` and opens `url`.
    pub(crate) fn open(exe: &Path, profile: &Path, url: &str) -> Self {
        std::fs::create_dir_all(profile).unwrap();
        let child = Command::new(exe)
            .args(HEADLESS)
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        // Owned at once, so that a failure below still kills it.
        let browser = Browser(child);
        let (port, path) = active_port(&profile.join("DevToolsActivePort"));
        let mut page = Self {
            _browser: browser,
            ws: WebSocket::connect(port, &path),
            session: String::new(),
            next_id: 0,
        };
        let target = page.call(None, "Target.createTarget", json!({ "url": url }));
        let target = target["targetId"].as_str().unwrap().to_owned();
        let attached = page.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        page.session = attached["sessionId"].as_str().unwrap().to_owned();
        page
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub(crate) fn eval(&mut self, expression: &str) -> Value {
        let session = self.session.clone();
        let result = self.call(
            Some(&session),
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        );
        if let Some(e) = result.get("exceptionDetails") {
            panic!("the page threw on {expression}: {e}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is truthy; its value then.
    pub(crate) fn wait_for(&mut self, expression: &str) -> Value {
        // Until the page has loaded, `document.body` and the console's elements may not exist
        // yet: a throw means "not yet", not a failure.
        let guarded = format!(
            "(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        );
        for _ in 0..polls(IO_TIMEOUT, POLL) {
            let v = self.eval(&guarded);
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            std::thread::sleep(POLL);
        }
        let error = self.eval("(document.body && document.body.dataset.error) || ''");
        panic!("never true in the page within {IO_TIMEOUT:?}: {expression} (page error: {error})");
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        self.ws.send(&message.to_string());
        loop {
            let answer: Value = serde_json::from_str(&self.ws.receive()).unwrap();
            // Events (no id) and answers to other calls are not ours.
            if answer["id"] != json!(id) {
                continue;
            }
            if let Some(e) = answer.get("error") {
                panic!("{method} failed: {e}");
            }
            return answer["result"].clone();
        }
    }
}

/// The browser process; killed with the helpers it started in its group when dropped.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// The port and browser path Chromium wrote, once it has.
fn active_port(file: &Path) -> (u16, String) {
    for _ in 0..polls(START_TIMEOUT, POLL) {
        if let Ok(text) = std::fs::read_to_string(file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                return (port.trim().parse().unwrap(), path.trim().to_owned());
            }
        }
        std::thread::sleep(POLL);
    }
    panic!(
        "the browser wrote no {} in {START_TIMEOUT:?}",
        file.display()
    );
}

/// How many polls `every` apart make up `bound` (the bound counts sleeps, not the clock).
fn polls(bound: Duration, every: Duration) -> u128 {
    bound.as_millis() / every.as_millis()
}

/// A WebSocket client (RFC 6455) for text messages: masked frames out, whole messages in.
struct WebSocket {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl WebSocket {
    fn connect(port: u16, path: &str) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut writer = stream.try_clone().unwrap();
        write!(
            writer,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.contains(" 101 "), "no WebSocket upgrade: {status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        Self { reader, writer }
    }

    fn send(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65_536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        // Clients must mask; the key need not be secret here.
        let mask = [0x5a, 0x17, 0xc3, 0x8e];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.writer.write_all(&frame).unwrap();
    }

    /// The next whole text message (continuation frames joined; pings skipped).
    fn receive(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.reader.read_exact(&mut head).unwrap();
            let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
            let len = match head[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.reader.read_exact(&mut b).unwrap();
                    u64::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.reader.read_exact(&mut b).unwrap();
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; usize::try_from(len).unwrap()];
            self.reader.read_exact(&mut payload).unwrap();
            match opcode {
                0x8 => panic!("the browser closed the DevTools connection"),
                0x9 | 0xa => continue,
                _ => message.extend_from_slice(&payload),
            }
            if fin {
                return String::from_utf8(message).unwrap();
            }
        }
    }
}
