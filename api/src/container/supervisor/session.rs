//! A running container's sessions: starting the init with its stdio
//! relayed to the log and attached clients, `exec`, signals, and what
//! clients send (stdin, resize, signals).

use super::*;
use stdio::StdioListener;

/// How long a signal may take to reach the guest agent.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after SIGKILL a container may take to end before its microVM
/// is killed.
pub(super) const KILL_GRACE: Duration = Duration::from_secs(3);

/// Polls `done` until it holds or `limit` passes.
fn wait_until(limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
}

/// The hello name of output stream `stream` ([`STDOUT`] or [`STDERR`]).
fn stream_name(stream: u8) -> &'static str {
    if stream == STDERR {
        "stderr"
    } else {
        "stdout"
    }
}

/// Copies an output stream to the log and the attached clients.
pub(super) fn relay_output(
    mut from: UnixStream,
    stream: u8,
    log: Option<Arc<Mutex<LogWriter>>>,
    clients: Arc<Mutex<Vec<UnixStream>>>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = &buf[..n];
        if let Some(log) = &log {
            let _ = lock(log).write(stream, data);
        }
        let frame = if stream == STDERR {
            Frame::Stderr(data.to_vec())
        } else {
            Frame::Stdout(data.to_vec())
        };
        lock(&clients).retain_mut(|c| frame.write_to(c).is_ok());
    }
}

impl Sup {
    pub(super) fn reply(s: &mut UnixStream, r: &Reply) {
        let _ = write_frame(s, r);
    }

    pub(super) fn err_reply(s: &mut UnixStream, e: &StartError) {
        Self::reply(
            s,
            &Reply::Error {
                message: e.message.clone(),
                status: e.status,
            },
        );
    }

    pub(super) fn write_state(&self, f: impl FnOnce(&mut State)) {
        let mut st = lock(&self.state);
        f(&mut st);
        if let Err(e) = self.handle.write_state(&st) {
            log_line(&self.handle, &format!("writing state: {e}"));
        }
    }

    /// Starts the init: stdio listeners first, then the agent's Start.
    pub(super) fn start(
        self: &Arc<Self>,
        console_size: Option<ConsoleSize>,
    ) -> Result<(), StartError> {
        log::info!(
            "start asked {:.0} ms after the supervisor started",
            ms(self.vm.start_clock.elapsed())
        );
        let mut started = lock(&self.started);
        if *started {
            return fail("container already started");
        }
        let p = &self.config.process;
        let log = Arc::new(Mutex::new(
            LogWriter::with_config(&self.handle.log_path(), self.config.log)
                .map_err(io_ctx(self.handle.log_path().display()))?,
        ));
        let [stdin_port, stdout_port, stderr_port] = INIT_STDIO_PORTS;
        let mut outs = vec![(stdout_port, STDOUT)];
        if !p.tty {
            outs.push((stderr_port, STDERR));
        }
        let listeners = outs
            .iter()
            .map(|(port, stream)| {
                let name = stream_name(*stream);
                Ok((
                    StdioListener::bind(&self.vm.uds, *port, None, name)?,
                    *stream,
                ))
            })
            .collect::<io::Result<Vec<_>>>()
            .map_err(io_ctx("stdio socket"))?;
        let stdin_l = if p.open_stdin {
            Some(
                StdioListener::bind(&self.vm.uds, stdin_port, None, "stdin")
                    .map_err(io_ctx("stdio socket"))?,
            )
        } else {
            None
        };
        // Accept the agent's connections while Start runs. A restored
        // init's come when it next writes (the agent opens them again).
        let restored = self.vm.snapshot.restored;
        let accept_limit = (!restored).then_some(Duration::from_secs(30));
        let mut relays = Vec::new();
        for (l, stream) in listeners {
            let (log, clients) = (log.clone(), self.io.clients.clone());
            let (go_tx, go_rx) = mpsc::channel::<()>();
            lock(&self.io.go).push(go_tx);
            let connected = Arc::new(AtomicBool::new(false));
            let accepted = connected.clone();
            let relay = thread::spawn(move || {
                if let Ok(s) = l.accept(accept_limit) {
                    accepted.store(true, Ordering::SeqCst);
                    let _ = go_rx.recv();
                    relay_output(s, stream, Some(log), clients);
                }
            });
            relays.push((relay, connected));
        }
        let stdin_slot = self.io.stdin.clone();
        let stdin_t = stdin_l.map(|l| {
            thread::spawn(move || {
                if let Ok(s) = l.accept(accept_limit) {
                    *lock(&stdin_slot) = Some(s);
                }
            })
        });
        let t = Instant::now();
        let pid = if restored {
            lock(&self.state).guest_pid.unwrap_or(0)
        } else {
            match lock(&self.agent).call(AgentRequest::Start {
                id: CONTAINER_ID.into(),
            }) {
                Ok(Response::Started { pid }) => pid,
                Ok(other) => return fail(format!("unexpected answer to start: {other:?}")),
                Err(e) => return Err(agent_error(e)),
            }
        };
        // The pty got the size known at creation; a later `start -a` from
        // another terminal brings its own.
        if let Some(size) = console_size.filter(|s| Some(*s) != p.console_size) {
            let _ = lock(&self.agent).call(AgentRequest::Resize {
                id: CONTAINER_ID.into(),
                exec_id: None,
                rows: size.rows,
                cols: size.cols,
            });
        }
        if let Some(t) = stdin_t {
            let _ = t.join();
        }
        *started = true;
        *lock(&self.io.relays) = relays;
        {
            let mut tm = lock(&self.timings);
            tm.exec_ms = ms(t.elapsed());
            tm.total_ms = ms(self.vm.start_clock.elapsed());
        }
        let timings = lock(&self.timings).clone();
        self.write_state(|s| {
            if !s.restarting {
                // Started by the user: the policy's count starts over.
                s.restart_count = 0;
            }
            s.restarting = false;
            s.status = Status::Running;
            s.started_at = Some(now_rfc3339());
            s.guest_pid = Some(pid);
            s.timings = Some(timings);
        });
        self.spawn_waiter(None, {
            let tx = self.events.clone();
            move |r| {
                let _ = tx.send(match r {
                    Ok(code) => Event::Exited(code),
                    Err(why) => Event::WaitFailed(why),
                });
            }
        })?;
        Ok(())
    }

    /// Registers a client for the init's output and lets output flow.
    pub(super) fn attach_started(&self, c: &UnixStream) {
        if let Ok(cc) = c.try_clone() {
            lock(&self.io.clients).push(cc);
        }
        lock(&self.io.go).clear();
    }

    /// A thread that waits for a process on its own agent connection.
    pub(super) fn spawn_waiter(
        &self,
        exec_id: Option<String>,
        done: impl FnOnce(Result<i32, String>) + Send + 'static,
    ) -> Result<(), StartError> {
        // A wait lasts as long as the process: no call timeout.
        let mut c = AgentClient::connect(&self.vm.uds)
            .map_err(agent_error)?
            .with_timeout(None);
        thread::spawn(move || {
            let r = match c.call(AgentRequest::Wait {
                id: CONTAINER_ID.into(),
                exec_id,
            }) {
                Ok(Response::Exited { status }) => Ok(exit_code(status)),
                Ok(other) => Err(format!("unexpected answer to wait: {other:?}")),
                Err(e) => Err(crate::error::chain(&e)),
            };
            done(r);
        });
        Ok(())
    }

    /// Reads a client's frames: stdin, EOF, resize, signals.
    pub(super) fn client_input(
        &self,
        mut c: UnixStream,
        exec: Option<(String, UnixStream)>,
        stdin: bool,
    ) {
        let exec_id = exec.as_ref().map(|(id, _)| id.clone());
        let mut exec_stdin = exec.map(|(_, s)| s);
        while let Ok(Some(f)) = Frame::read_from(&mut c) {
            match f {
                Frame::Stdin(d) if stdin => {
                    if let Some(s) = exec_stdin.as_mut() {
                        let _ = s.write_all(&d);
                    } else if let Some(s) = lock(&self.io.stdin).as_mut() {
                        let _ = s.write_all(&d);
                    }
                }
                Frame::StdinEof if stdin => {
                    if let Some(s) = exec_stdin.as_ref() {
                        let _ = s.shutdown(Shutdown::Write);
                    } else if let Some(s) = lock(&self.io.stdin).take() {
                        let _ = s.shutdown(Shutdown::Write);
                    }
                }
                Frame::Resize { rows, cols } => {
                    let _ = lock(&self.agent).call(AgentRequest::Resize {
                        id: CONTAINER_ID.into(),
                        exec_id: exec_id.clone(),
                        rows,
                        cols,
                    });
                }
                Frame::Signal(signal) => {
                    let _ = lock(&self.agent).call(AgentRequest::Signal {
                        id: CONTAINER_ID.into(),
                        exec_id: exec_id.clone(),
                        signal,
                    });
                }
                _ => {}
            }
        }
    }

    pub(super) fn exec(self: &Arc<Self>, mut c: UnixStream, spec: ProcessSpec, attach: Attach) {
        if lock(&self.state).paused {
            Self::err_reply(
                &mut c,
                &StartError {
                    message: format!(
                        "Container {} is paused, unpause the container before exec",
                        self.handle.id
                    ),
                    status: 1,
                },
            );
            return;
        }
        if lock(&self.state).status != Status::Running {
            Self::err_reply(
                &mut c,
                &StartError {
                    message: format!("container {} is not running", self.handle.id),
                    status: 1,
                },
            );
            return;
        }
        let n = self.next_exec.fetch_add(1, Ordering::SeqCst);
        let exec_id = format!("e{n}");
        let Some([stdin_port, stdout_port, stderr_port]) = exec_stdio_ports(n) else {
            Self::err_reply(&mut c, &StartError::new("too many execs in this container"));
            return;
        };
        let ports = StdioPorts {
            stdin: attach.stdin.then_some(stdin_port),
            stdout: Some(stdout_port),
            stderr: (!spec.tty).then_some(stderr_port),
        };
        let r = (|| -> Result<(), StartError> {
            let mut listeners = Vec::new();
            for (port, stream) in [(ports.stdout, STDOUT), (ports.stderr, STDERR)] {
                if let Some(port) = port {
                    let name = stream_name(stream);
                    listeners.push((
                        StdioListener::bind(&self.vm.uds, port, Some(&exec_id), name)
                            .map_err(io_ctx("stdio"))?,
                        stream,
                    ));
                }
            }
            let stdin_l = match ports.stdin {
                Some(p) => Some(
                    StdioListener::bind(&self.vm.uds, p, Some(&exec_id), "stdin")
                        .map_err(io_ctx("stdio"))?,
                ),
                None => None,
            };
            let client = Arc::new(Mutex::new(vec![c
                .try_clone()
                .map_err(io_ctx("client socket"))?]));
            let mut relays = Vec::new();
            let mut go = Vec::new();
            for (l, stream) in listeners {
                let client = client.clone();
                let (go_tx, go_rx) = mpsc::channel::<()>();
                go.push(go_tx);
                relays.push(thread::spawn(move || {
                    if let Ok(s) = l.accept(Some(Duration::from_secs(30))) {
                        let _ = go_rx.recv();
                        relay_output(s, stream, None, client);
                    }
                }));
            }
            let stdin_t =
                stdin_l.map(|l| thread::spawn(move || l.accept(Some(Duration::from_secs(30)))));
            let p = &self.config.process;
            let mut env = p.env.clone();
            env.extend(spec.env.iter().cloned());
            let process = ProcessSpec {
                entrypoint: Vec::new(),
                cmd: spec.cmd.clone(),
                env,
                workdir: if spec.workdir.is_empty() {
                    p.workdir.clone()
                } else {
                    spec.workdir.clone()
                },
                user: if spec.user.is_empty() {
                    p.user.clone()
                } else {
                    spec.user.clone()
                },
                tty: spec.tty,
                open_stdin: attach.stdin,
                console_size: attach.console_size,
            };
            lock(&self.agent)
                .call(AgentRequest::Exec(ExecRequest {
                    id: CONTAINER_ID.into(),
                    exec_id: exec_id.clone(),
                    process,
                    stdio: ports.clone(),
                }))
                .map_err(agent_error)?;
            let stdin = stdin_t.and_then(|t| t.join().ok()).and_then(Result::ok);
            let (tx, rx) = mpsc::channel();
            self.spawn_waiter(Some(exec_id.clone()), move |r| {
                let _ = tx.send(r.unwrap_or(137));
            })?;
            Self::reply(&mut c, &Reply::Ok);
            drop(go);
            let input = c.try_clone().map_err(io_ctx("client socket"))?;
            let me = self.clone();
            let id2 = exec_id.clone();
            thread::spawn(move || me.client_input(input, stdin.map(|s| (id2, s)), attach.stdin));
            let code = rx.recv().unwrap_or(137);
            for r in relays {
                let _ = r.join();
            }
            let _ = Frame::Exit(code).write_to(&mut c);
            Ok(())
        })();
        if let Err(e) = r {
            Self::err_reply(&mut c, &e);
        }
    }

    /// [`Sup::signal`] asked for by the user (`kill`): the container's
    /// restart policy no longer applies, as Docker's.
    pub(super) fn signal_by_user(&self, signal: i32) -> Result<(), StartError> {
        self.by_user.store(true, Ordering::SeqCst);
        self.signal(signal)
    }

    /// Sends `signal` to the container's init. A SIGKILL the guest does
    /// not take in time kills the microVM instead: a wedged or hostile
    /// guest cannot keep a container alive against `kill`.
    pub(super) fn signal(&self, signal: i32) -> Result<(), StartError> {
        if !*lock(&self.started) {
            return fail(format!("container {} is not running", self.handle.id));
        }
        let sent = lock(&self.agent).call_within(
            AgentRequest::Signal {
                id: CONTAINER_ID.into(),
                exec_id: None,
                signal,
            },
            Some(SIGNAL_TIMEOUT),
        );
        match sent {
            Ok(_) => Ok(()),
            Err(_) if signal == libc::SIGKILL => {
                self.kill_vmm();
                Ok(())
            }
            Err(e) => Err(agent_error(e)),
        }
    }

    /// Kills husk-vmm (the container then ends as `Exited (137)`).
    pub(super) fn kill_vmm(&self) {
        self.vm.killed.store(true, Ordering::SeqCst);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.vm.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    /// `SetHosts`: the network members' lines of the container's
    /// `/etc/hosts` (a created container has its file too).
    pub(super) fn set_hosts(
        &self,
        entries: Vec<husk_proto::agent::HostEntry>,
    ) -> Result<(), StartError> {
        lock(&self.agent)
            .call_within(
                AgentRequest::SetHosts {
                    id: CONTAINER_ID.into(),
                    entries,
                },
                Some(SIGNAL_TIMEOUT),
            )
            .map(|_| ())
            .map_err(agent_error)
    }

    /// This container as a member of its user-defined networks (as its
    /// record says now: they change while it runs), when it has an address
    /// and had or has networks.
    pub(super) fn member(&self) -> Option<crate::container::membership::Member> {
        let config = self.handle.config().unwrap_or_else(|_| self.config.clone());
        if config.networks.is_empty() && self.config.networks.is_empty() {
            return None;
        }
        let ip = lock(&self.state).ip.as_deref()?.parse().ok()?;
        Some(crate::container::membership::Member::new(&config, ip))
    }

    /// `husk pause` (`pause` true) or `husk unpause`: stops or resumes the
    /// microVM's vCPUs; the state says `paused`.
    pub(super) fn pause(&self, pause: bool) -> Result<(), StartError> {
        let id = &self.handle.id;
        {
            let st = lock(&self.state);
            if st.status != Status::Running {
                return Err(StartError {
                    message: format!("Container {id} is not running"),
                    status: 1,
                });
            }
            if st.paused == pause {
                let what = if pause {
                    "already paused"
                } else {
                    "not paused"
                };
                return Err(StartError {
                    message: format!("Container {id} is {what}"),
                    status: 1,
                });
            }
        }
        let command = if pause { "pause" } else { "resume" };
        vmm::api_command(&self.vm.api_sock, command)?;
        self.write_state(|s| s.paused = pause);
        Ok(())
    }

    /// `husk stop`: SIGTERM; after `grace`, SIGKILL; if the container still
    /// runs [`KILL_GRACE`] later (the guest does not answer), husk-vmm is
    /// killed. Signals go from threads of their own, so a wedged agent
    /// cannot hold this up: it returns within `grace` + [`KILL_GRACE`].
    pub(super) fn stop(self: &Arc<Self>, grace: Duration) {
        if lock(&self.state).paused {
            // As Docker: a paused container is resumed to be stopped.
            let _ = self.pause(false);
        }
        let running = || lock(&self.state).status == Status::Running;
        let send = |sig: i32| {
            let sup = self.clone();
            thread::spawn(move || {
                let _ = sup.signal(sig);
            });
        };
        send(libc::SIGTERM);
        wait_until(grace, || !running());
        if running() {
            send(libc::SIGKILL);
            wait_until(KILL_GRACE, || !running());
        }
        if running() {
            log_line(
                &self.handle,
                "stop: the guest did not stop the container; killing husk-vmm",
            );
            self.kill_vmm();
        }
    }
}
