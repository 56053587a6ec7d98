//! One thread, raw edge-triggered epoll: per wake, each ready socket is read
//! once (again only while a read fills the whole buffer), as tokio does.
//! `stamped`: reads are `recvmsg` with `SO_TIMESTAMPING` software receive
//! stamps taken from the control message, as barrage's direct client reads.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::Args;
use crate::conn::{self, Conn, Ramp, Tally};

/// Room for one `scm_timestamping` control message, aligned for its header.
#[repr(align(8))]
struct Control([u8; 128]);

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

struct Loop<'a> {
    args: &'a Args,
    ep: RawFd,
    stamped: bool,
    req: Vec<u8>,
    buf: Vec<u8>,
    ctl: Control,
    conns: Vec<Conn>,
    t: Tally,
}

pub fn run(args: &Args, stamped: bool) -> io::Result<Tally> {
    // SAFETY: plain syscall; the fd is closed at the end of this function.
    let ep = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    let mut l = Loop {
        args,
        ep,
        stamped,
        req: args.request(),
        buf: vec![0; args.buf_size],
        ctl: Control([0; 128]),
        conns: Vec::with_capacity(args.users),
        t: Tally::default(),
    };
    l.t.note = format!("buf={} stamped={stamped}", args.buf_size);
    let result = l.event_loop();
    for c in &l.conns {
        conn::close(c.fd);
    }
    conn::close(ep);
    result.map(|()| l.t)
}

impl Loop<'_> {
    fn event_loop(&mut self) -> io::Result<()> {
        let end = Instant::now() + Duration::from_secs_f64(self.args.secs);
        let mut ramp = Ramp::new(self.args.users, self.args.ramp_secs);
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let coalesce = Duration::from_micros(u64::from(self.args.coalesce_us));
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            for _ in 0..ramp.due(now) {
                let fd = self.open(self.conns.len())?;
                self.conns.push(Conn::new(fd));
                ramp.spawned += 1;
            }
            let until = ramp.next_at().map_or(end, |t| t.min(end));
            // SAFETY: `events` outlives the call and its length is passed.
            let n = unsafe {
                libc::epoll_wait(
                    self.ep,
                    events.as_mut_ptr(),
                    events.len() as i32,
                    conn::ms_until(until),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.t.waits += 1;
            for ev in &events[..n as usize] {
                self.service({ ev.u64 } as usize)?;
            }
            if !coalesce.is_zero() {
                std::thread::sleep(coalesce.saturating_sub(now.elapsed()));
            }
        }
    }

    /// Connects user `idx`'s socket, registers it and sends its first request.
    fn open(&mut self, idx: usize) -> io::Result<RawFd> {
        let fd = conn::connect(self.args.addr, self.args.no_quickack)?;
        if self.stamped {
            conn::enable_stamps(fd)?;
        }
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: idx as u64,
        };
        // SAFETY: `ev` is read during the call only.
        check(unsafe { libc::epoll_ctl(self.ep, libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        self.send(fd)?;
        Ok(fd)
    }

    /// Sends the request whole: a few hundred bytes into an empty socket
    /// buffer always fit, so a short write is an error here.
    fn send(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: the request buffer outlives the call.
        let n = unsafe {
            libc::send(
                fd,
                self.req.as_ptr().cast(),
                self.req.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n != self.req.len() as isize {
            return Err(io::Error::other(format!(
                "short send ({n}): {}",
                io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// Reads a ready socket: once, again only while a read fills the buffer.
    fn service(&mut self, idx: usize) -> io::Result<()> {
        let fd = self.conns[idx].fd;
        loop {
            let n = self.recv(fd);
            if n > 0 {
                let n = n as usize;
                let data = &self.buf[..n];
                if self.conns[idx].on_bytes(data, &mut self.t) {
                    if self.send(fd).is_err() {
                        return self.reopen(idx);
                    }
                    return Ok(());
                }
                if n < self.buf.len() {
                    return Ok(());
                }
                continue;
            }
            let e = io::Error::last_os_error();
            if n < 0 && e.kind() == io::ErrorKind::WouldBlock {
                return Ok(());
            }
            if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return self.reopen(idx);
        }
    }

    /// The server closed (or broke) the connection: a new one in its place.
    fn reopen(&mut self, idx: usize) -> io::Result<()> {
        conn::close(self.conns[idx].fd);
        self.t.reconnects += 1;
        let fd = self.open(idx)?;
        self.conns[idx] = Conn::new(fd);
        Ok(())
    }

    fn recv(&mut self, fd: RawFd) -> isize {
        if !self.stamped {
            // SAFETY: writes at most buf.len() bytes into buf.
            return unsafe { libc::recv(fd, self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
        }
        let mut iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast(),
            iov_len: self.buf.len(),
        };
        // SAFETY: msghdr is plain data; zero is its empty value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = self.ctl.0.as_mut_ptr().cast();
        msg.msg_controllen = self.ctl.0.len();
        // SAFETY: iov and control point at buffers that outlive the call.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
        if n > 0 {
            self.take_stamp(&msg);
        }
        n
    }

    /// Finds the software receive stamp among `msg`'s control messages and
    /// counts its lag to now (what barrage computes per read).
    fn take_stamp(&mut self, msg: &libc::msghdr) {
        // SAFETY: the CMSG_* walk stays within msg_controllen bytes of the
        // control buffer the kernel just filled; the data is read unaligned.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == conn::SO_TIMESTAMPING {
                    let ts: [libc::timespec; 3] =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    self.t.stamp(ts[0]);
                }
                c = libc::CMSG_NXTHDR(msg, c);
            }
        }
    }
}
