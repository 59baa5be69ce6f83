//! stompgen: a single-threaded, epoll-driven STOMP load generator.
//!
//! It speaks STOMP 1.0-1.2 either over raw TCP or over WebSocket (a minimal
//! RFC 6455 client: handshake, masked client frames, unmasked server frames,
//! continuation, ping/pong, close).  Only the Rust standard library is used;
//! epoll and sysconf are declared by hand.
//!
//! Two modes:
//!   load  R rooms x S subscribers + P publishers; closed loop (bounded number
//!         of messages in flight) or fixed rate.  Every message carries a stamp
//!         `#P<publisher>:S<seq>:T<ns>#` so that loss, duplication, reordering
//!         and latency can be checked on every subscriber.
//!   idle  N connections that only CONNECT (with heart-beats) and then stay
//!         idle, heart-beating, for a while.
//!
//! Progress events and the final result are printed as JSON lines on stdout.
//! When --server-pid is given, the server's CPU time (utime+stime) and RSS are
//! read from /proc at the edges of the measured window, together with the
//! generator's own CPU time.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

mod sys {
    #[cfg_attr(target_arch = "x86_64", repr(C, packed))]
    #[cfg_attr(not(target_arch = "x86_64"), repr(C))]
    #[derive(Clone, Copy)]
    pub struct Event {
        pub events: u32,
        pub data: u64,
    }
    extern "C" {
        pub fn epoll_create1(flags: i32) -> i32;
        pub fn epoll_ctl(epfd: i32, op: i32, fd: i32, ev: *mut Event) -> i32;
        pub fn epoll_wait(epfd: i32, evs: *mut Event, max: i32, timeout: i32) -> i32;
        pub fn sysconf(name: i32) -> i64;
    }
    pub const IN: u32 = 0x1;
    pub const OUT: u32 = 0x4;
    pub const ADD: i32 = 1;
    pub const DEL: i32 = 2;
    pub const MOD: i32 = 3;
    pub const SC_CLK_TCK: i32 = 2;
}

// ---------------------------------------------------------------- config

#[derive(Clone)]
struct Cfg {
    mode: String,
    transport: String,
    host: String,
    port: u16,
    path: String,
    subprotocols: String,
    vhost: String,
    login: String,
    passcode: String,
    rooms: usize,
    room_base: usize,
    subs: usize,
    pubs: usize,
    dest: String,
    send_dest: String,
    body: String,
    body_size: usize,
    /// Chat bodies: "index" names publisher p as senderId p+1; "none" leaves senderId out
    /// (the server then takes the sender from the authenticated user).
    sender_id: String,
    rate: f64,
    inflight: usize,
    warmup: f64,
    duration: f64,
    drain: f64,
    idle_conns: usize,
    hold: f64,
    settle: f64,
    heartbeat: (u64, u64),
    setup_concurrency: usize,
    setup_timeout: f64,
    receipt_timeout: f64,
    ack_timeout: f64,
    server_pid: u32,
    max_latency_samples: usize,
    hard_limit: f64,
}

impl Cfg {
    fn parse() -> Cfg {
        let mut c = Cfg {
            mode: "load".into(),
            transport: "ws".into(),
            host: "127.0.0.1".into(),
            port: 15674,
            path: "/ws".into(),
            subprotocols: "v12.stomp, v11.stomp, v10.stomp".into(),
            vhost: "/".into(),
            login: "guest".into(),
            passcode: "guest".into(),
            rooms: 10,
            room_base: 1,
            subs: 10,
            pubs: 10,
            dest: "/topic/chat/room/{room}".into(),
            send_dest: String::new(),
            body: "raw".into(),
            body_size: 64,
            sender_id: "index".into(),
            rate: 0.0,
            inflight: 200,
            warmup: 2.0,
            duration: 8.0,
            drain: 5.0,
            idle_conns: 10000,
            hold: 12.0,
            settle: 2.0,
            heartbeat: (0, 0),
            setup_concurrency: 32,
            setup_timeout: 180.0,
            receipt_timeout: 5.0,
            ack_timeout: 10.0,
            server_pid: 0,
            max_latency_samples: 20_000_000,
            hard_limit: 600.0,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let k = args[i].trim_start_matches('-').to_string();
            if k == "help" || k == "h" {
                eprintln!("usage: stompgen --mode load|idle --transport ws|tcp --host H --port N --path P \
                           --rooms R --subs S --pubs P --dest '/topic/chat/room/{{room}}' [--send-dest D] \
                           --body raw|chat --body-size B [--sender-id index|none] (--inflight N | --rate MSGS_PER_S) \
                           --warmup S --duration S --idle-conns N --hold S --heartbeat cx,cy --server-pid PID");
                std::process::exit(0);
            }
            let v = args.get(i + 1).cloned().unwrap_or_else(|| die(&format!("missing value for {}", k)));
            i += 2;
            let f = |s: &str| -> f64 { s.parse().unwrap_or_else(|_| die(&format!("bad number {}", s))) };
            let u = |s: &str| -> usize { s.parse().unwrap_or_else(|_| die(&format!("bad integer {}", s))) };
            match k.as_str() {
                "mode" => c.mode = v,
                "transport" => c.transport = v,
                "host" => c.host = v,
                "port" => c.port = u(&v) as u16,
                "path" => c.path = v,
                "subprotocols" => c.subprotocols = v,
                "vhost" => c.vhost = v,
                "login" => c.login = v,
                "passcode" => c.passcode = v,
                "rooms" => c.rooms = u(&v),
                "room-base" => c.room_base = u(&v),
                "subs" => c.subs = u(&v),
                "pubs" => c.pubs = u(&v),
                "dest" => c.dest = v,
                "send-dest" => c.send_dest = v,
                "body" => c.body = v,
                "body-size" => c.body_size = u(&v),
                "sender-id" => c.sender_id = v,
                "rate" => c.rate = f(&v),
                "inflight" => c.inflight = u(&v),
                "warmup" => c.warmup = f(&v),
                "duration" => c.duration = f(&v),
                "drain" => c.drain = f(&v),
                "idle-conns" => c.idle_conns = u(&v),
                "hold" => c.hold = f(&v),
                "settle" => c.settle = f(&v),
                "heartbeat" => {
                    let mut it = v.split(',');
                    let a = u(it.next().unwrap_or("0")) as u64;
                    let b = u(it.next().unwrap_or("0")) as u64;
                    c.heartbeat = (a, b);
                }
                "setup-concurrency" => c.setup_concurrency = u(&v).max(1),
                "setup-timeout" => c.setup_timeout = f(&v),
                "receipt-timeout" => c.receipt_timeout = f(&v),
                "ack-timeout" => c.ack_timeout = f(&v),
                "server-pid" => c.server_pid = u(&v) as u32,
                "max-latency-samples" => c.max_latency_samples = u(&v),
                "hard-limit" => c.hard_limit = f(&v),
                _ => die(&format!("unknown option --{}", k)),
            }
        }
        if c.send_dest.is_empty() {
            c.send_dest = c.dest.clone();
        }
        c
    }
}

fn die(msg: &str) -> ! {
    eprintln!("stompgen: {}", msg);
    std::process::exit(2);
}

// ---------------------------------------------------------------- /proc

#[derive(Clone, Copy, Default)]
struct ProcSample {
    cpu_s: f64,
    rss_kb: u64,
}

/// Busy CPU-seconds of the whole machine (all CPUs), from /proc/stat.
fn machine_busy_s() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else { return 0.0 };
    let Some(line) = s.lines().next() else { return 0.0 };
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest is inside user)
    let busy: f64 = v.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, x)| x).sum();
    busy / clk_tck()
}

fn clk_tck() -> f64 {
    let t = unsafe { sys::sysconf(sys::SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn proc_sample(pid: &str) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid)).ok()?;
    // Fields after the last ')' (the command name may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid)).ok()?;
    let mut rss = 0;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            rss = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        }
    }
    Some(ProcSample { cpu_s: (ut + st) / clk_tck(), rss_kb: rss })
}

struct Samples {
    server_pid: u32,
    points: Vec<(String, f64, ProcSample, ProcSample)>,
    busy: Vec<f64>,
    t0: Instant,
}

impl Samples {
    fn take(&mut self, label: &str) {
        let me = proc_sample("self").unwrap_or_default();
        let srv = if self.server_pid > 0 {
            proc_sample(&self.server_pid.to_string()).unwrap_or_default()
        } else {
            ProcSample::default()
        };
        let busy = machine_busy_s();
        let t = self.t0.elapsed().as_secs_f64();
        self.points.push((label.to_string(), t, srv, me));
        self.busy.push(busy);
        emit(&format!(
            "{{\"event\":\"{}\",\"t\":{:.4},\"server_cpu_s\":{:.3},\"server_rss_kb\":{},\"gen_cpu_s\":{:.3},\"gen_rss_kb\":{},\"machine_busy_s\":{:.3}}}",
            label, t, srv.cpu_s, srv.rss_kb, me.cpu_s, me.rss_kb, busy
        ));
    }
    fn get(&self, label: &str) -> (f64, ProcSample, ProcSample) {
        for p in &self.points {
            if p.0 == label {
                return (p.1, p.2, p.3);
            }
        }
        (0.0, ProcSample::default(), ProcSample::default())
    }
    /// CPU-seconds used by everything except the server and the generator between two points.
    fn other_cpu(&self, a: &str, b: &str) -> f64 {
        let ia = self.points.iter().position(|p| p.0 == a);
        let ib = self.points.iter().position(|p| p.0 == b);
        match (ia, ib) {
            (Some(ia), Some(ib)) => {
                let (pa, pb) = (&self.points[ia], &self.points[ib]);
                let m = self.busy[ib] - self.busy[ia];
                let s = if self.server_pid > 0 { pb.2.cpu_s - pa.2.cpu_s } else { 0.0 };
                (m - s - (pb.3.cpu_s - pa.3.cpu_s)).max(0.0)
            }
            _ => 0.0,
        }
    }
}

fn emit(line: &str) {
    let out = std::io::stdout();
    let mut l = out.lock();
    let _ = l.write_all(line.as_bytes());
    let _ = l.write_all(b"\n");
    let _ = l.flush();
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

// ---------------------------------------------------------------- helpers

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545F4914F6CDD1D)
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = String::new();
    for ch in data.chunks(3) {
        let b = [ch[0], *ch.get(1).unwrap_or(&0), *ch.get(2).unwrap_or(&0)];
        let n = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        o.push(T[(n >> 18) as usize & 63] as char);
        o.push(T[(n >> 12) as usize & 63] as char);
        o.push(if ch.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        o.push(if ch.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    o
}

fn find(h: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || h.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= h.len() {
        match h[i..h.len() - needle.len() + 1].iter().position(|&b| b == first) {
            None => return None,
            Some(p) => {
                i += p;
                if &h[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

fn parse_u64(b: &[u8]) -> (u64, usize) {
    let mut v = 0u64;
    let mut n = 0;
    while n < b.len() && b[n].is_ascii_digit() {
        v = v * 10 + (b[n] - b'0') as u64;
        n += 1;
    }
    (v, n)
}

/// Finds `#P<p>:S<s>:T<t>#` in a body.
fn parse_stamp(body: &[u8]) -> Option<(usize, u64, u64)> {
    let i = find(body, b"#P")?;
    let b = &body[i + 2..];
    let (p, n1) = parse_u64(b);
    if n1 == 0 || b.get(n1..n1 + 2)? != b":S" {
        return None;
    }
    let b = &b[n1 + 2..];
    let (s, n2) = parse_u64(b);
    if n2 == 0 || b.get(n2..n2 + 2)? != b":T" {
        return None;
    }
    let b = &b[n2 + 2..];
    let (t, n3) = parse_u64(b);
    if n3 == 0 {
        return None;
    }
    Some((p as usize, s, t))
}

/// Finds the integer value of a top-level-looking `"key":` in a JSON body.
fn json_int(body: &[u8], key: &[u8]) -> Option<u64> {
    let i = find(body, key)?;
    let mut b = &body[i + key.len()..];
    while let Some(&c) = b.first() {
        if c == b' ' || c == b':' {
            b = &b[1..];
        } else {
            break;
        }
    }
    let (v, n) = parse_u64(b);
    if n == 0 {
        None
    } else {
        Some(v)
    }
}

// ---------------------------------------------------------------- connections

#[derive(PartialEq, Clone, Copy, Debug)]
enum St {
    Handshake,
    Connecting,
    Connected,
    Closed,
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Sub(usize),
    Pub(usize),
    Idle,
}

struct Track {
    seen: Vec<u64>,
    max_seen: i64,
}

struct Conn {
    sock: TcpStream,
    fd: i32,
    role: Role,
    st: St,
    ws: bool,
    rbuf: Vec<u8>,
    sbuf: Vec<u8>,
    spos: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    out_armed: bool,
    subscribed: bool,
    tracks: Vec<Option<Track>>,
    hb_tx_ms: u64,
    hb_rx_ms: u64,
    last_tx: Instant,
    last_rx: Instant,
    hb_rx: u64,
    hb_late: bool,
    version: String,
}

enum Ev {
    Connected { hb: (u64, u64), version: String },
    Receipt,
    Msg { p: usize, s: u64, t: u64, room_seq: Option<u64> },
    MsgNoStamp,
    Error(String),
}

/// Parses complete STOMP frames from `buf[*pos..]`; pushes events.  Returns
/// the number of heart-beat EOLs seen.
fn parse_stomp(
    buf: &[u8],
    pos: &mut usize,
    evs: &mut Vec<Ev>,
    want_room_seq: bool,
    sample: &mut String,
) -> u64 {
    let mut hb = 0;
    loop {
        let mut i = *pos;
        while i < buf.len() && (buf[i] == b'\n' || buf[i] == b'\r') {
            if buf[i] == b'\n' {
                hb += 1;
            }
            i += 1;
        }
        *pos = i;
        if i >= buf.len() {
            return hb;
        }
        // command line
        let Some(nl) = buf[i..].iter().position(|&b| b == b'\n') else { return hb };
        let mut cmd = &buf[i..i + nl];
        if cmd.last() == Some(&b'\r') {
            cmd = &cmd[..cmd.len() - 1];
        }
        let mut j = i + nl + 1;
        let mut clen: Option<usize> = None;
        let mut hbh: Option<(u64, u64)> = None;
        let mut msg_hdr: Option<String> = None;
        let mut version = String::new();
        // headers
        loop {
            let Some(nl) = buf[j..].iter().position(|&b| b == b'\n') else { return hb };
            let mut line = &buf[j..j + nl];
            j += nl + 1;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.is_empty() {
                break;
            }
            if let Some(c) = line.iter().position(|&b| b == b':') {
                let (k, v) = (&line[..c], &line[c + 1..]);
                match k {
                    b"content-length" => {
                        if clen.is_none() {
                            clen = std::str::from_utf8(v).ok().and_then(|s| s.trim().parse().ok());
                        }
                    }
                    b"heart-beat" => {
                        let s = String::from_utf8_lossy(v);
                        let mut it = s.split(',');
                        let a = it.next().and_then(|x| x.trim().parse().ok()).unwrap_or(0);
                        let b = it.next().and_then(|x| x.trim().parse().ok()).unwrap_or(0);
                        hbh = Some((a, b));
                    }
                    b"message" => msg_hdr = Some(String::from_utf8_lossy(v).into_owned()),
                    b"version" => version = String::from_utf8_lossy(v).into_owned(),
                    _ => {}
                }
            }
        }
        let body_start = j;
        let body_end;
        match clen {
            Some(n) => {
                if buf.len() < body_start + n + 1 {
                    return hb;
                }
                body_end = body_start + n;
                *pos = body_end + 1; // skip NUL
            }
            None => {
                let Some(z) = buf[body_start..].iter().position(|&b| b == 0) else { return hb };
                body_end = body_start + z;
                *pos = body_end + 1;
            }
        }
        let body = &buf[body_start..body_end];
        if cmd == b"MESSAGE" && sample.is_empty() {
            *sample = String::from_utf8_lossy(&buf[i..body_end.min(i + 1500)]).into_owned();
        }
        match cmd {
            b"MESSAGE" => match parse_stamp(body) {
                Some((p, s, t)) => {
                    let room_seq = if want_room_seq { json_int(body, b"\"seq\"") } else { None };
                    evs.push(Ev::Msg { p, s, t, room_seq })
                }
                None => evs.push(Ev::MsgNoStamp),
            },
            b"RECEIPT" => evs.push(Ev::Receipt),
            b"CONNECTED" => evs.push(Ev::Connected { hb: hbh.unwrap_or((0, 0)), version }),
            b"ERROR" => {
                let mut m = msg_hdr.unwrap_or_default();
                let b = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                if !b.is_empty() {
                    m.push_str(" | ");
                    m.push_str(&b);
                }
                evs.push(Ev::Error(m))
            }
            _ => {}
        }
    }
}

struct PubState {
    conn: usize,
    room: usize,
    sent: u64,
    base: u64,
    pending: VecDeque<(u32, u64)>,
    start_ns: u64,
    interval_ns: f64,
}

#[derive(Default)]
struct Stats {
    delivered: u64,
    win_delivered: u64,
    win_sent: u64,
    dup: u64,
    reordered: u64,
    foreign: u64,
    nostamp: u64,
    errors: u64,
    first_error: String,
    disconnects: u64,
    connect_failures: u64,
    first_connect_failure: String,
    ack_timeouts: u64,
    room_seq_regressions: u64,
    receipts: u64,
    hb_rx: u64,
    hb_tx: u64,
    lat_us: Vec<u32>,
    backlog_capped: u64,
}

struct Gen {
    cfg: Cfg,
    ep: i32,
    addr: SocketAddr,
    conns: Vec<Conn>,
    pubs: Vec<PubState>,
    st: Stats,
    t0: Instant,
    measuring: bool,
    publishing: bool,
    rng: Rng,
    evs: Vec<Ev>,
    scratch: Vec<u8>,
    body: Vec<u8>,
    rdbuf: Vec<u8>,
    connected_count: usize,
    pending_setup: usize,
    last_seq_by_conn: Vec<u64>,
    chat: bool,
    sample: String,
}

impl Gen {
    fn new(cfg: Cfg) -> Gen {
        let ep = unsafe { sys::epoll_create1(0) };
        if ep < 0 {
            die("epoll_create1 failed");
        }
        let addr = (cfg.host.as_str(), cfg.port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| die("cannot resolve host"));
        let chat = cfg.body == "chat";
        Gen {
            cfg,
            ep,
            addr,
            conns: Vec::new(),
            pubs: Vec::new(),
            st: Stats::default(),
            t0: Instant::now(),
            measuring: false,
            publishing: false,
            rng: Rng(0x9E3779B97F4A7C15),
            evs: Vec::new(),
            scratch: Vec::with_capacity(4096),
            body: Vec::with_capacity(4096),
            rdbuf: vec![0u8; 256 * 1024],
            connected_count: 0,
            pending_setup: 0,
            last_seq_by_conn: Vec::new(),
            chat,
            sample: String::new(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    fn open(&mut self, role: Role) -> bool {
        let sock = match TcpStream::connect_timeout(&self.addr, Duration::from_secs(10)) {
            Ok(s) => s,
            Err(e) => {
                self.st.connect_failures += 1;
                if self.st.first_connect_failure.is_empty() {
                    self.st.first_connect_failure = e.to_string();
                }
                return false;
            }
        };
        let _ = sock.set_nodelay(true);
        sock.set_nonblocking(true).expect("nonblocking");
        let fd = sock.as_raw_fd();
        let ws = self.cfg.transport == "ws";
        let idx = self.conns.len();
        let ntracks = if let Role::Sub(_) = role { self.cfg.pubs } else { 0 };
        let now = Instant::now();
        let mut c = Conn {
            sock,
            fd,
            role,
            st: if ws { St::Handshake } else { St::Connecting },
            ws,
            rbuf: Vec::new(),
            sbuf: Vec::new(),
            spos: 0,
            wbuf: Vec::new(),
            wpos: 0,
            out_armed: false,
            subscribed: false,
            tracks: (0..ntracks).map(|_| None).collect(),
            hb_tx_ms: 0,
            hb_rx_ms: 0,
            last_tx: now,
            last_rx: now,
            hb_rx: 0,
            hb_late: false,
            version: String::new(),
        };
        let mut ev = sys::Event { events: sys::IN, data: idx as u64 };
        if unsafe { sys::epoll_ctl(self.ep, sys::ADD, fd, &mut ev) } < 0 {
            die("epoll_ctl ADD failed");
        }
        if ws {
            let mut key = [0u8; 16];
            for k in key.iter_mut() {
                *k = self.rng.next() as u8;
            }
            let req = format!(
                "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {}\r\n\
                 Origin: http://{}:{}\r\n\r\n",
                self.cfg.path,
                self.cfg.host,
                self.cfg.port,
                base64(&key),
                self.cfg.subprotocols,
                self.cfg.host,
                self.cfg.port
            );
            c.wbuf.extend_from_slice(req.as_bytes());
            self.conns.push(c);
        } else {
            self.conns.push(c);
            self.send_connect(idx);
        }
        self.pending_setup += 1;
        self.last_seq_by_conn.push(0);
        self.flush(idx);
        true
    }

    fn send_connect(&mut self, i: usize) {
        let hb = if self.conns[i].role == Role::Idle { self.cfg.heartbeat } else { (0, 0) };
        let mut f = format!(
            "CONNECT\naccept-version:1.2,1.1,1.0\nhost:{}\nheart-beat:{},{}\n",
            self.cfg.vhost, hb.0, hb.1
        );
        if !self.cfg.login.is_empty() {
            f.push_str(&format!("login:{}\npasscode:{}\n", self.cfg.login, self.cfg.passcode));
        }
        f.push('\n');
        let mut b = f.into_bytes();
        b.push(0);
        self.frame_out(i, &b);
    }

    /// Queues one STOMP frame (or heart-beat) on connection i, framed for WS if needed.
    fn frame_out(&mut self, i: usize, data: &[u8]) {
        let mask = self.rng.next() as u32;
        let c = &mut self.conns[i];
        c.last_tx = Instant::now();
        if !c.ws {
            c.wbuf.extend_from_slice(data);
            return;
        }
        let w = &mut c.wbuf;
        w.push(0x81); // FIN + text
        let n = data.len();
        if n < 126 {
            w.push(0x80 | n as u8);
        } else if n < 65536 {
            w.push(0x80 | 126);
            w.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            w.push(0x80 | 127);
            w.extend_from_slice(&(n as u64).to_be_bytes());
        }
        let m = mask.to_be_bytes();
        w.extend_from_slice(&m);
        let start = w.len();
        w.extend_from_slice(data);
        for (k, b) in w[start..].iter_mut().enumerate() {
            *b ^= m[k & 3];
        }
    }

    fn ws_control(&mut self, i: usize, opcode: u8, payload: &[u8]) {
        let mask = (self.rng.next() as u32).to_be_bytes();
        let w = &mut self.conns[i].wbuf;
        w.push(0x80 | opcode);
        w.push(0x80 | payload.len().min(125) as u8);
        w.extend_from_slice(&mask);
        for (k, b) in payload.iter().take(125).enumerate() {
            w.push(b ^ mask[k & 3]);
        }
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.st == St::Closed {
            c.wbuf.clear();
            c.wpos = 0;
            return;
        }
        while c.wpos < c.wbuf.len() {
            match c.sock.write(&c.wbuf[c.wpos..]) {
                Ok(0) => break,
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    c.wbuf.clear();
                    c.wpos = 0;
                    self.close(i);
                    return;
                }
            }
        }
        let pending = c.wpos < c.wbuf.len();
        if !pending {
            c.wbuf.clear();
            c.wpos = 0;
        } else if c.wpos > 1 << 20 {
            c.wbuf.drain(..c.wpos);
            c.wpos = 0;
        }
        if pending != c.out_armed {
            c.out_armed = pending;
            let mut ev = sys::Event { events: sys::IN | if pending { sys::OUT } else { 0 }, data: i as u64 };
            unsafe { sys::epoll_ctl(self.ep, sys::MOD, c.fd, &mut ev) };
        }
    }

    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.st == St::Closed {
            return;
        }
        if c.st != St::Connected {
            self.pending_setup = self.pending_setup.saturating_sub(1);
        } else {
            self.connected_count = self.connected_count.saturating_sub(1);
        }
        c.st = St::Closed;
        let mut ev = sys::Event { events: 0, data: 0 };
        unsafe { sys::epoll_ctl(self.ep, sys::DEL, c.fd, &mut ev) };
        let _ = c.sock.shutdown(std::net::Shutdown::Both);
        self.st.disconnects += 1;
    }

    fn on_readable(&mut self, i: usize) {
        let mut rd = std::mem::take(&mut self.rdbuf);
        loop {
            let r = self.conns[i].sock.read(&mut rd);
            match r {
                Ok(0) => {
                    self.close(i);
                    break;
                }
                Ok(n) => {
                    self.conns[i].last_rx = Instant::now();
                    self.ingest(i, &rd[..n]);
                    if self.conns[i].st == St::Closed || n < rd.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(i);
                    break;
                }
            }
        }
        self.rdbuf = rd;
    }

    fn ingest(&mut self, i: usize, data: &[u8]) {
        let c = &mut self.conns[i];
        if !c.ws {
            c.sbuf.extend_from_slice(data);
        } else {
            c.rbuf.extend_from_slice(data);
            if c.st == St::Handshake {
                let Some(end) = find(&c.rbuf, b"\r\n\r\n") else { return };
                let head = String::from_utf8_lossy(&c.rbuf[..end]).into_owned();
                c.rbuf.drain(..end + 4);
                if !head.starts_with("HTTP/1.1 101") {
                    self.st.connect_failures += 1;
                    if self.st.first_connect_failure.is_empty() {
                        self.st.first_connect_failure =
                            format!("WebSocket upgrade refused: {}", head.lines().next().unwrap_or(""));
                    }
                    self.close(i);
                    return;
                }
                c.st = St::Connecting;
                self.send_connect(i);
            }
            // decode WS frames into sbuf
            let c = &mut self.conns[i];
            let mut p = 0;
            let mut ctl: Vec<(u8, Vec<u8>)> = Vec::new();
            loop {
                let b = &c.rbuf[p..];
                if b.len() < 2 {
                    break;
                }
                let op = b[0] & 0x0f;
                let masked = b[1] & 0x80 != 0;
                let mut len = (b[1] & 0x7f) as usize;
                let mut h = 2;
                if len == 126 {
                    if b.len() < 4 {
                        break;
                    }
                    len = u16::from_be_bytes([b[2], b[3]]) as usize;
                    h = 4;
                } else if len == 127 {
                    if b.len() < 10 {
                        break;
                    }
                    len = u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize;
                    h = 10;
                }
                let mk = if masked { h += 4; Some([b[h - 4], b[h - 3], b[h - 2], b[h - 1]]) } else { None };
                if b.len() < h + len {
                    break;
                }
                let payload = &b[h..h + len];
                match op {
                    0 | 1 | 2 => {
                        let s = c.sbuf.len();
                        c.sbuf.extend_from_slice(payload);
                        if let Some(m) = mk {
                            for (k, x) in c.sbuf[s..].iter_mut().enumerate() {
                                *x ^= m[k & 3];
                            }
                        }
                    }
                    8 => ctl.push((8, payload.to_vec())),
                    9 => ctl.push((9, payload.to_vec())),
                    _ => {}
                }
                p += h + len;
            }
            c.rbuf.drain(..p);
            for (op, pl) in ctl {
                if op == 9 {
                    self.ws_control(i, 10, &pl);
                } else {
                    self.ws_control(i, 8, &pl);
                    self.flush(i);
                    self.close(i);
                    return;
                }
            }
        }
        let mut evs = std::mem::take(&mut self.evs);
        evs.clear();
        let c = &mut self.conns[i];
        let hb = parse_stomp(&c.sbuf, &mut c.spos, &mut evs, self.chat, &mut self.sample);
        if c.spos >= c.sbuf.len() {
            c.sbuf.clear();
            c.spos = 0;
        } else if c.spos > 64 * 1024 {
            c.sbuf.drain(..c.spos);
            c.spos = 0;
        }
        c.hb_rx += hb;
        self.st.hb_rx += hb;
        for ev in evs.drain(..) {
            self.handle(i, ev);
        }
        self.evs = evs;
    }

    fn handle(&mut self, i: usize, ev: Ev) {
        match ev {
            Ev::Connected { hb, version } => {
                let c = &mut self.conns[i];
                c.version = version;
                if c.st != St::Connecting {
                    return;
                }
                c.st = St::Connected;
                if c.role == Role::Idle {
                    let (cx, cy) = self.cfg.heartbeat;
                    c.hb_tx_ms = if cx > 0 && hb.1 > 0 { cx.max(hb.1) } else { 0 };
                    c.hb_rx_ms = if cy > 0 && hb.0 > 0 { cy.max(hb.0) } else { 0 };
                }
                self.pending_setup = self.pending_setup.saturating_sub(1);
                self.connected_count += 1;
                if let Role::Sub(room) = c.role {
                    let dest = self.cfg.dest.replace("{room}", &(room + self.cfg.room_base).to_string());
                    let f = format!("SUBSCRIBE\nid:sub-{}\ndestination:{}\nack:auto\nreceipt:r-{}\n\n\0", i, dest, i);
                    self.frame_out(i, f.as_bytes());
                }
            }
            Ev::Receipt => {
                self.st.receipts += 1;
                self.conns[i].subscribed = true;
            }
            Ev::Error(m) => {
                self.st.errors += 1;
                if self.st.first_error.is_empty() {
                    self.st.first_error = m;
                }
            }
            Ev::MsgNoStamp => self.st.nostamp += 1,
            Ev::Msg { p, s, t, room_seq } => {
                let now = self.now_ns();
                if let Some(rs) = room_seq {
                    if rs <= self.last_seq_by_conn[i] && self.last_seq_by_conn[i] != 0 {
                        self.st.room_seq_regressions += 1;
                    }
                    self.last_seq_by_conn[i] = rs;
                }
                let c = &mut self.conns[i];
                if p >= c.tracks.len() {
                    self.st.foreign += 1;
                    return;
                }
                let tr = c.tracks[p].get_or_insert_with(|| Track { seen: Vec::new(), max_seen: -1 });
                let w = (s / 64) as usize;
                if w >= tr.seen.len() {
                    tr.seen.resize(w + 1 + 64, 0);
                }
                let bit = 1u64 << (s % 64);
                self.st.delivered += 1;
                if tr.seen[w] & bit != 0 {
                    self.st.dup += 1;
                    return;
                }
                tr.seen[w] |= bit;
                if (s as i64) < tr.max_seen {
                    self.st.reordered += 1;
                } else {
                    tr.max_seen = s as i64;
                }
                if self.measuring {
                    self.st.win_delivered += 1;
                    if self.st.lat_us.len() < self.cfg.max_latency_samples {
                        self.st.lat_us.push((now.saturating_sub(t) / 1000) as u32);
                    }
                }
                let pb = &mut self.pubs[p];
                if s >= pb.base {
                    let k = (s - pb.base) as usize;
                    if k < pb.pending.len() && pb.pending[k].0 > 0 {
                        pb.pending[k].0 -= 1;
                        while let Some(&(0, _)) = pb.pending.front() {
                            pb.pending.pop_front();
                            pb.base += 1;
                        }
                    }
                }
            }
        }
    }

    fn poll(&mut self, timeout_ms: i32) {
        let mut evs = [sys::Event { events: 0, data: 0 }; 512];
        let n = unsafe { sys::epoll_wait(self.ep, evs.as_mut_ptr(), evs.len() as i32, timeout_ms) };
        for e in evs.iter().take(n.max(0) as usize) {
            let (events, data) = (e.events, e.data);
            let i = data as usize;
            if i >= self.conns.len() || self.conns[i].st == St::Closed {
                continue;
            }
            if events & sys::OUT != 0 {
                self.flush(i);
            }
            if events & !sys::OUT != 0 {
                self.on_readable(i);
                // replies (SUBSCRIBE, CONNECT, pong) go out at once
                if !self.conns[i].wbuf.is_empty() {
                    self.flush(i);
                }
            }
        }
    }

    fn flush_all(&mut self) {
        for i in 0..self.conns.len() {
            if self.conns[i].wbuf.len() > self.conns[i].wpos {
                self.flush(i);
            }
        }
    }

    fn build_body(&mut self, p: usize, s: u64, t: u64, room: usize) {
        let stamp = format!("#P{}:S{}:T{}#", p, s, t);
        let mut detail = stamp.into_bytes();
        while detail.len() < self.cfg.body_size {
            detail.push(b'x');
        }
        self.body.clear();
        if self.chat {
            self.body.extend_from_slice(
                format!("{{\"type\":\"TALK\",\"roomId\":{},\"detailMessage\":\"", room + self.cfg.room_base)
                    .as_bytes(),
            );
            self.body.extend_from_slice(&detail);
            if self.cfg.sender_id == "none" {
                self.body.extend_from_slice(b"\"}");
            } else {
                self.body.extend_from_slice(format!("\",\"senderId\":{}}}", p + 1).as_bytes());
            }
        } else {
            self.body.extend_from_slice(&detail);
        }
    }

    fn send_msg(&mut self, p: usize, stamp_ns: u64) {
        let (conn, room, s) = {
            let pb = &self.pubs[p];
            (pb.conn, pb.room, pb.sent)
        };
        self.build_body(p, s, stamp_ns, room);
        let dest = self.cfg.send_dest.replace("{room}", &(room + self.cfg.room_base).to_string());
        let ctype = if self.chat { "application/json" } else { "text/plain" };
        let mut f = std::mem::take(&mut self.scratch);
        f.clear();
        f.extend_from_slice(
            format!("SEND\ndestination:{}\ncontent-type:{}\ncontent-length:{}\n\n", dest, ctype, self.body.len())
                .as_bytes(),
        );
        f.extend_from_slice(&self.body);
        f.push(0);
        self.frame_out(conn, &f);
        self.scratch = f;
        let subs = self.cfg.subs as u32;
        let pb = &mut self.pubs[p];
        pb.sent += 1;
        if subs > 0 {
            pb.pending.push_back((subs, stamp_ns));
        } else {
            pb.base += 1;
        }
        if self.measuring {
            self.st.win_sent += 1;
        }
    }

    fn pump(&mut self) {
        if !self.publishing {
            return;
        }
        let now = self.now_ns();
        let ack_to = (self.cfg.ack_timeout * 1e9) as u64;
        let per_pub_window = ((self.cfg.inflight + self.pubs.len() - 1) / self.pubs.len().max(1)).max(1);
        for p in 0..self.pubs.len() {
            if self.conns[self.pubs[p].conn].st != St::Connected {
                continue;
            }
            // expire messages that never completed (lost somewhere)
            {
                let pb = &mut self.pubs[p];
                while let Some(&(_, ts)) = pb.pending.front() {
                    if now.saturating_sub(ts) > ack_to {
                        pb.pending.pop_front();
                        pb.base += 1;
                        self.st.ack_timeouts += 1;
                    } else {
                        break;
                    }
                }
            }
            if self.cfg.rate > 0.0 {
                let (start, iv, sent) = (self.pubs[p].start_ns, self.pubs[p].interval_ns, self.pubs[p].sent);
                if now < start {
                    continue;
                }
                let due = ((now - start) as f64 / iv) as u64 + 1;
                let mut k = sent;
                while k < due {
                    if self.pubs[p].pending.len() >= 100_000 {
                        self.st.backlog_capped += due - k;
                        // skip ahead: the generator never builds an unbounded backlog
                        self.pubs[p].start_ns += ((due - k) as f64 * iv) as u64;
                        break;
                    }
                    let sched = start + (k as f64 * iv) as u64;
                    self.send_msg(p, sched);
                    k += 1;
                }
            } else {
                while self.pubs[p].pending.len() < per_pub_window {
                    let t = self.now_ns();
                    self.send_msg(p, t);
                }
            }
        }
    }

    fn outstanding(&self) -> usize {
        self.pubs.iter().map(|p| p.pending.len()).sum()
    }

    // ------------------------------------------------------------ modes

    fn run_load(&mut self) {
        let deadline = Instant::now() + Duration::from_secs_f64(self.cfg.hard_limit);
        let mut samples = Samples { server_pid: self.cfg.server_pid, points: Vec::new(), busy: Vec::new(), t0: self.t0 };
        samples.take("start");
        let (r, s, p) = (self.cfg.rooms, self.cfg.subs, self.cfg.pubs);
        // Subscribers first, then publishers; at most setup_concurrency handshakes at once
        // (a server's listen backlog may be small).
        let mut roles: Vec<Role> = Vec::new();
        for room in 0..r {
            for _ in 0..s {
                roles.push(Role::Sub(room));
            }
        }
        for k in 0..p {
            roles.push(Role::Pub(k));
        }
        let setup_start = Instant::now();
        let mut next = 0;
        let mut all_connected_at: Option<Instant> = None;
        loop {
            while next < roles.len() && self.pending_setup < self.cfg.setup_concurrency {
                let role = roles[next];
                next += 1;
                let idx = self.conns.len();
                let ok = self.open(role);
                if let Role::Pub(k) = role {
                    if !ok {
                        die("could not open a publisher connection");
                    }
                    self.pubs.push(PubState {
                        conn: idx,
                        room: k % r.max(1),
                        sent: 0,
                        base: 0,
                        pending: VecDeque::new(),
                        start_ns: 0,
                        interval_ns: 0.0,
                    });
                }
            }
            self.poll(5);
            self.flush_all();
            let n = self.conns.len();
            let subs_total = r * s;
            if next >= roles.len() && self.connected_count == n && all_connected_at.is_none() {
                all_connected_at = Some(Instant::now());
            }
            let receipts_done = self.st.receipts as usize >= subs_total;
            if let Some(t) = all_connected_at {
                if receipts_done || t.elapsed().as_secs_f64() > self.cfg.receipt_timeout {
                    break;
                }
            }
            if setup_start.elapsed().as_secs_f64() > self.cfg.setup_timeout || Instant::now() > deadline {
                break;
            }
            if next >= roles.len() && self.pending_setup == 0 && self.connected_count < n {
                break; // some connections failed/closed during setup
            }
        }
        let setup_s = setup_start.elapsed().as_secs_f64();
        emit(&format!(
            "{{\"event\":\"ready\",\"setup_s\":{:.3},\"connected\":{},\"wanted\":{},\"receipts\":{}}}",
            setup_s,
            self.connected_count,
            self.conns.len(),
            self.st.receipts
        ));
        if self.connected_count < self.conns.len() {
            eprintln!(
                "stompgen: only {}/{} connections are up (errors={} first='{}' connect_failures={} '{}')",
                self.connected_count,
                self.conns.len(),
                self.st.errors,
                self.st.first_error,
                self.st.connect_failures,
                self.st.first_connect_failure
            );
        }
        // publish
        let start = self.now_ns() + 1_000_000;
        let np = self.pubs.len().max(1) as f64;
        for (k, pb) in self.pubs.iter_mut().enumerate() {
            if self.cfg.rate > 0.0 {
                pb.interval_ns = 1e9 * np / self.cfg.rate;
                pb.start_ns = start + (k as f64 * 1e9 / self.cfg.rate) as u64;
            }
        }
        self.publishing = true;
        let t_pub = Instant::now();
        let warm_end = t_pub + Duration::from_secs_f64(self.cfg.warmup);
        let meas_end = warm_end + Duration::from_secs_f64(self.cfg.duration);
        let mut meas_start_inst = t_pub;
        let timeout = if self.cfg.rate > 0.0 { 1 } else { 20 };
        loop {
            let now = Instant::now();
            if !self.measuring && now >= warm_end {
                samples.take("measure_start");
                meas_start_inst = Instant::now();
                self.measuring = true;
            }
            if self.measuring && now >= meas_end {
                self.measuring = false;
                samples.take("measure_end");
                break;
            }
            if now > deadline {
                break;
            }
            self.pump();
            self.flush_all();
            self.poll(timeout);
        }
        let win_s = meas_start_inst.elapsed().as_secs_f64().min(self.cfg.duration + 1.0);
        let win_s = if win_s > 0.0 { win_s } else { self.cfg.duration };
        let win_s = {
            let (a, _, _) = samples.get("measure_start");
            let (b, _, _) = samples.get("measure_end");
            if b > a {
                b - a
            } else {
                win_s
            }
        };
        // drain
        self.publishing = false;
        let drain_start = Instant::now();
        while self.outstanding() > 0 && drain_start.elapsed().as_secs_f64() < self.cfg.drain && Instant::now() < deadline {
            self.flush_all();
            self.poll(20);
        }
        let drain_s = drain_start.elapsed().as_secs_f64();
        samples.take("end");
        // loss accounting
        let mut lost = 0u64;
        let mut expected = 0u64;
        for c in &self.conns {
            if let Role::Sub(room) = c.role {
                for (p, pb) in self.pubs.iter().enumerate() {
                    if pb.room != room {
                        continue;
                    }
                    expected += pb.sent;
                    let seen: u64 = match &c.tracks[p] {
                        None => 0,
                        Some(t) => {
                            let mut n = 0u64;
                            for s in 0..pb.sent {
                                let w = (s / 64) as usize;
                                if w < t.seen.len() && t.seen[w] & (1 << (s % 64)) != 0 {
                                    n += 1;
                                }
                            }
                            n
                        }
                    };
                    lost += pb.sent - seen;
                }
            }
        }
        let sent: u64 = self.pubs.iter().map(|p| p.sent).sum();
        let mut lat = std::mem::take(&mut self.st.lat_us);
        lat.sort_unstable();
        let pct = |q: f64| -> f64 {
            if lat.is_empty() {
                return -1.0;
            }
            let k = ((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
            lat[k] as f64 / 1000.0
        };
        let mean = if lat.is_empty() { -1.0 } else { lat.iter().map(|&x| x as f64).sum::<f64>() / lat.len() as f64 / 1000.0 };
        let (_, s0, g0) = samples.get("measure_start");
        let (_, s1, g1) = samples.get("measure_end");
        let (_, sst, _) = samples.get("start");
        let srv_cpu = s1.cpu_s - s0.cpu_s;
        let gen_cpu = g1.cpu_s - g0.cpu_s;
        let wd = self.st.win_delivered.max(1) as f64;
        let versions: Vec<String> = {
            let mut v: Vec<String> = self.conns.iter().map(|c| c.version.clone()).collect();
            v.sort();
            v.dedup();
            v
        };
        emit(&format!(
            concat!(
                "{{\"event\":\"result\",\"mode\":\"load\",\"transport\":{},\"body\":{},\"rooms\":{},\"subs\":{},",
                "\"pubs\":{},\"inflight\":{},\"rate\":{},\"body_size\":{},\"connections\":{},\"connected\":{},",
                "\"setup_s\":{:.3},\"window_s\":{:.4},\"sent\":{},\"expected_deliveries\":{},\"delivered\":{},",
                "\"window_sent\":{},\"window_delivered\":{},\"deliveries_per_s\":{:.1},\"msgs_in_per_s\":{:.1},",
                "\"lat_ms\":{{\"mean\":{:.3},\"p50\":{:.3},\"p90\":{:.3},\"p99\":{:.3},\"p999\":{:.3},\"max\":{:.3},\"n\":{}}},",
                "\"lost\":{},\"duplicated\":{},\"reordered\":{},\"room_seq_regressions\":{},\"foreign\":{},",
                "\"unstamped\":{},\"ack_timeouts\":{},\"backlog_capped\":{},\"errors\":{},\"first_error\":{},",
                "\"disconnects\":{},\"connect_failures\":{},\"first_connect_failure\":{},\"receipts\":{},",
                "\"drain_s\":{:.3},\"outstanding_after_drain\":{},\"stomp_versions\":{},\"sample_message\":{},",
                "\"server_cpu_s\":{:.3},\"server_cpu_us_per_delivery\":{:.3},\"server_cores\":{:.3},",
                "\"server_rss_kb_before\":{},\"server_rss_kb\":{},",
                "\"gen_cpu_s\":{:.3},\"gen_cpu_us_per_delivery\":{:.3},\"gen_cores\":{:.3},\"other_cores\":{:.3}}}"
            ),
            json_str(&self.cfg.transport),
            json_str(&self.cfg.body),
            r,
            s,
            p,
            self.cfg.inflight,
            self.cfg.rate,
            self.cfg.body_size,
            self.conns.len(),
            self.connected_count,
            setup_s,
            win_s,
            sent,
            expected,
            self.st.delivered,
            self.st.win_sent,
            self.st.win_delivered,
            self.st.win_delivered as f64 / win_s,
            self.st.win_sent as f64 / win_s,
            mean,
            pct(0.50),
            pct(0.90),
            pct(0.99),
            pct(0.999),
            pct(1.0),
            lat.len(),
            lost,
            self.st.dup,
            self.st.reordered,
            self.st.room_seq_regressions,
            self.st.foreign,
            self.st.nostamp,
            self.st.ack_timeouts,
            self.st.backlog_capped,
            self.st.errors,
            json_str(&self.st.first_error),
            self.st.disconnects,
            self.st.connect_failures,
            json_str(&self.st.first_connect_failure),
            self.st.receipts,
            drain_s,
            self.outstanding(),
            json_str(&versions.join(",")),
            json_str(&self.sample),
            srv_cpu,
            srv_cpu * 1e6 / wd,
            srv_cpu / win_s,
            sst.rss_kb,
            s1.rss_kb,
            gen_cpu,
            gen_cpu * 1e6 / wd,
            gen_cpu / win_s,
            samples.other_cpu("measure_start", "measure_end") / win_s,
        ));
    }

    fn run_idle(&mut self) {
        let deadline = Instant::now() + Duration::from_secs_f64(self.cfg.hard_limit);
        let mut samples = Samples { server_pid: self.cfg.server_pid, points: Vec::new(), busy: Vec::new(), t0: self.t0 };
        let n = self.cfg.idle_conns;
        samples.take("before_connect");
        let setup_start = Instant::now();
        let mut opened = 0;
        let mut last_hb_check = Instant::now();
        loop {
            while opened < n && self.pending_setup < self.cfg.setup_concurrency {
                opened += 1;
                if !self.open(Role::Idle) && self.st.connect_failures > 50 {
                    opened = n; // give up opening more
                }
            }
            self.flush_all();
            self.poll(2);
            self.heartbeats(&mut last_hb_check);
            if opened >= n && self.pending_setup == 0 {
                break;
            }
            if setup_start.elapsed().as_secs_f64() > self.cfg.setup_timeout || Instant::now() > deadline {
                break;
            }
        }
        let setup_s = setup_start.elapsed().as_secs_f64();
        samples.take("connected");
        let connected_at_setup = self.connected_count;
        emit(&format!(
            "{{\"event\":\"ready\",\"setup_s\":{:.3},\"connected\":{},\"wanted\":{}}}",
            setup_s, self.connected_count, n
        ));
        let disconnects_at_setup = self.st.disconnects;
        let hb_rx0 = self.st.hb_rx;
        let hold_start = Instant::now();
        let mut settled = false;
        while hold_start.elapsed().as_secs_f64() < self.cfg.hold && Instant::now() < deadline {
            if !settled && hold_start.elapsed().as_secs_f64() >= self.cfg.settle {
                samples.take("settled");
                settled = true;
            }
            self.flush_all();
            self.poll(50);
            self.heartbeats(&mut last_hb_check);
        }
        if !settled {
            samples.take("settled");
        }
        let hold_s = hold_start.elapsed().as_secs_f64();
        samples.take("hold_end");
        let late = self.conns.iter().filter(|c| c.hb_late).count();
        let got_hb = self.conns.iter().filter(|c| c.st == St::Connected && c.hb_rx > 0).count();
        let (_, b, gb) = samples.get("before_connect");
        let (_, c, gc) = samples.get("connected");
        let (_, st_, _) = samples.get("settled");
        let (_, h, gh) = samples.get("hold_end");
        let nc = connected_at_setup.max(1) as f64;
        let mut hbi: Vec<u64> = self.conns.iter().map(|c| c.hb_tx_ms).collect();
        hbi.sort();
        hbi.dedup();
        let mut hbr: Vec<u64> = self.conns.iter().map(|c| c.hb_rx_ms).collect();
        hbr.sort();
        hbr.dedup();
        emit(&format!(
            concat!(
                "{{\"event\":\"result\",\"mode\":\"idle\",\"transport\":{},\"wanted\":{},\"connected\":{},",
                "\"connected_at_end\":{},\"setup_s\":{:.3},\"hold_s\":{:.3},\"heartbeat\":\"{},{}\",",
                "\"hb_send_ms\":{:?},\"hb_expect_ms\":{:?},\"hb_rx_during_hold\":{},\"hb_tx\":{},",
                "\"conns_with_server_hb\":{},\"server_hb_late\":{},\"disconnects_during_hold\":{},",
                "\"errors\":{},\"first_error\":{},\"connect_failures\":{},\"first_connect_failure\":{},",
                "\"server_rss_kb_before\":{},\"server_rss_kb_connected\":{},\"server_rss_kb_settled\":{},",
                "\"server_rss_kb_hold_end\":{},\"server_kb_per_conn\":{:.3},\"server_setup_cpu_s\":{:.3},",
                "\"server_setup_cpu_us_per_conn\":{:.2},\"server_hold_cpu_s\":{:.3},\"server_hold_cores\":{:.4},",
                "\"gen_setup_cpu_s\":{:.3},\"gen_hold_cpu_s\":{:.3},\"gen_rss_kb\":{},",
                "\"other_cores_setup\":{:.3},\"other_cores_hold\":{:.3}}}"
            ),
            json_str(&self.cfg.transport),
            n,
            connected_at_setup,
            self.connected_count,
            setup_s,
            hold_s,
            self.cfg.heartbeat.0,
            self.cfg.heartbeat.1,
            hbi,
            hbr,
            self.st.hb_rx - hb_rx0,
            self.st.hb_tx,
            got_hb,
            late,
            self.st.disconnects - disconnects_at_setup,
            self.st.errors,
            json_str(&self.st.first_error),
            self.st.connect_failures,
            json_str(&self.st.first_connect_failure),
            b.rss_kb,
            c.rss_kb,
            st_.rss_kb,
            h.rss_kb,
            (h.rss_kb as f64 - b.rss_kb as f64) / nc,
            c.cpu_s - b.cpu_s,
            (c.cpu_s - b.cpu_s) * 1e6 / nc,
            h.cpu_s - c.cpu_s,
            (h.cpu_s - c.cpu_s) / hold_s.max(1e-9),
            gc.cpu_s - gb.cpu_s,
            gh.cpu_s - gc.cpu_s,
            gh.rss_kb,
            samples.other_cpu("before_connect", "connected") / setup_s.max(1e-9),
            samples.other_cpu("connected", "hold_end") / hold_s.max(1e-9),
        ));
    }

    fn heartbeats(&mut self, last: &mut Instant) {
        if last.elapsed() < Duration::from_millis(100) {
            return;
        }
        *last = Instant::now();
        let now = Instant::now();
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if c.st != St::Connected {
                continue;
            }
            if c.hb_rx_ms > 0 && !c.hb_late && now.duration_since(c.last_rx) > Duration::from_millis(c.hb_rx_ms * 2) {
                c.hb_late = true;
            }
            if c.hb_tx_ms > 0 && now.duration_since(c.last_tx) >= Duration::from_millis(c.hb_tx_ms) {
                self.frame_out(i, b"\n");
                self.st.hb_tx += 1;
                self.flush(i);
            }
        }
    }
}

fn main() {
    let cfg = Cfg::parse();
    let mode = cfg.mode.clone();
    let mut g = Gen::new(cfg);
    match mode.as_str() {
        "load" => g.run_load(),
        "idle" => g.run_idle(),
        m => die(&format!("unknown mode {}", m)),
    }
}
