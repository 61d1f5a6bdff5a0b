//! The veil run: servers A and B as nodes and the device, over the broker.

use super::*;

/// What the veil run leaves for replaying the device's work.
pub struct VeilReplayState {
    /// The device's configuration.
    pub config: DeviceConfig,
    /// Its sessions (seeds).
    pub sessions: Vec<DeviceSession>,
    /// The session its frames used.
    pub current: Option<SessionId>,
    /// Messages the device received per warm-up frame, in order.
    pub warmup_received: Vec<Vec<Vec<u8>>>,
}

/// Publishes what the device's node queued, in order.
fn publish_all(link: &mut Link, device: &mut VeilDevice) -> Result<()> {
    device.publish(|t| link.publish_confirmed(&t.topic, t.payload.clone(), t.retain, t.confirm))
}

/// Runs veil: servers A and B and the device, over the broker.
pub fn run_veil(
    broker: SocketAddr,
    model: &Model,
    inputs: &[Input],
    warmup: usize,
    placement: &Placement,
    quiet: bool,
) -> Result<(Run, VeilReplayState)> {
    let params = Params::default();
    let topology = Arc::new(model.topology().clone());
    progress(quiet, "veil: generating the servers' keys...");
    let key_a = Arc::new(SecretKey::generate(&mut rand::rng(), KeySize::Bits2048)?);
    let key_b = Arc::new(SecretKey::generate(&mut rand::rng(), KeySize::Bits2048)?);
    let public_b = key_b.public_key().clone();
    let mut rng = rand::rng();
    let a = ServerA::new(
        ServerAConfig {
            params: params.clone(),
            topology: Arc::clone(&topology),
            plan: Arc::new(model.plan().clone()),
            key: Arc::clone(&key_a),
            rounding_key: Seed::random(&mut rng),
        },
        // Full-length r^N, as server A re-randomizes for B by default:
        // fixed-base noise rests on a short-exponent assumption that B,
        // who knows φ(N), is outside of.
        PaillierPublic::new(
            public_b.clone(),
            textbook_noise(&public_b, params.pack, 4096),
            rand::random(),
        ),
    )?;
    let b = ServerB::new(
        ServerBConfig {
            params: params.clone(),
            topology: Arc::clone(&topology),
            key: Arc::clone(&key_b),
        },
        PaillierSecret::new(
            Arc::clone(&key_b),
            pooled_noise(&public_b, 16384),
            rand::random(),
        ),
    )?;
    let server_b = ServerHandle::spawn(
        broker,
        "server-b",
        "server-b-bench",
        2,
        VeilB {
            node: ServerBNode::new(b, BOptions::default(), Vec::new()),
            precompute_due: true,
            refill: None,
            started: Instant::now(),
            errors: Vec::new(),
        },
    )?;
    let server_a = ServerHandle::spawn(
        broker,
        "server-a",
        "server-a-bench",
        2,
        VeilA {
            node: ServerANode::new(
                a,
                AOptions {
                    worker: B_WORKER.into(),
                    ..AOptions::default()
                },
                Vec::new(),
            ),
            precompute_due: true,
            started: Instant::now(),
            errors: Vec::new(),
        },
    )?;
    progress(quiet, "veil: servers up, filling their noise pools...");
    wait_quiet(&[&server_a, &server_b])?;

    let config = DeviceConfig {
        device: DEVICE_USER.into(),
        params,
        topology,
        server_a: key_a.public_key().clone(),
        server_b: public_b,
    };
    let device_config = config.clone();
    let (setup, frames, received, warmup_received, sessions, sid, cost) =
        on_device_thread(placement, || {
            let node = |config: DeviceConfig| -> Result<VeilDevice> {
                let device = Device::new(config)?;
                let node = DeviceNode::new(device, DeviceOptions::default(), rand::random());
                Ok(VeilDevice::new(node))
            };
            let mut device = node(device_config)?;
            let mut link = Link::connect(
                broker,
                DEVICE_USER,
                &format!("{DEVICE_USER}-bench-veil"),
                placement.others(),
            )?;
            link.subscribe(&[&topics::result(DEVICE_USER)])?;
            let before_setup = link.settle()?;

            // Session set-up: the connection's Sync, the two seed encryptions
            // and the session messages.
            let mut setup_cpu = Duration::ZERO;
            let started = Instant::now();
            device_work(&mut setup_cpu, || -> Result<()> {
                device.handle(NodeInput::Connected)?;
                device.open_session()
            })?;
            publish_all(&mut link, &mut device)?;
            while link.acked < link.published {
                link.poll(Duration::from_millis(20))?;
            }
            let setup_wall = started.elapsed();
            wait_quiet(&[&server_a, &server_b])?;
            let after_setup = link.settle()?;
            let setup_traffic = after_setup.since(&before_setup);
            let mut samples = vec![setup_cpu];
            for _ in 1..SETUP_SAMPLES {
                let mut scratch = node(device.node.device().config().clone())?;
                let mut spent = Duration::ZERO;
                device_work(&mut spent, || -> Result<()> {
                    scratch.handle(NodeInput::Connected)?;
                    scratch.open_session()?;
                    std::hint::black_box(scratch.discard());
                    Ok(())
                })?;
                samples.push(spent);
            }
            let setup = setup_cost(&samples, setup_wall, setup_traffic);
            check_servers(&[&server_a, &server_b])?;
            let sid = device
                .node
                .device()
                .current()
                .map(|s| s.sid)
                .ok_or_else(|| anyhow!("no session after opening one"))?;
            let sessions: Vec<DeviceSession> = device.node.device().sessions().cloned().collect();

            let mut log = FrameLog::new("veil", inputs.len(), warmup, quiet);
            let mut warmup_received = Vec::new();
            let mut a_start = server_a.snapshot();
            let mut b_start = server_b.snapshot();
            let mut before = link.settle()?;
            let result_topic = topics::result(DEVICE_USER);
            // The edge agent checks the node's timer on a tick of this period.
            let tick = Duration::from_millis(500);
            let mut last_tick = Instant::now();
            for (i, input) in inputs.iter().enumerate() {
                if i == warmup {
                    a_start = server_a.snapshot();
                    b_start = server_b.snapshot();
                }
                let mut spent = Duration::ZERO;
                let started = Instant::now();
                let t = device_work(&mut spent, || device.capture(&input.x_hat))?;
                if t != i as u64 {
                    bail!("frame {i} got counter {t}");
                }
                let capture = spent;
                tracing::debug!(frame = t, "frame captured");
                publish_all(&mut link, &mut device)?;
                let mut got = Vec::new();
                let (class, wall) = loop {
                    let polled = link.poll(Duration::from_millis(50))?;
                    let mut delivered = None;
                    match polled {
                        Polled::Message { topic, payload } if topic == result_topic => {
                            got.push(payload.clone());
                            let input = NodeInput::Message {
                                topic,
                                payload: Bytes::from(payload),
                            };
                            delivered = device_work(&mut spent, || device.handle(input))?;
                        }
                        Polled::Confirmed(token) => {
                            device_work(&mut spent, || device.handle(NodeInput::Confirmed(token)))?;
                        }
                        Polled::Message { topic, .. } => bail!("unexpected message on {topic}"),
                        Polled::Other | Polled::Timeout => {
                            check_servers(&[&server_a, &server_b])?;
                            if started.elapsed() > Duration::from_secs(1800) {
                                bail!("frame {t}: no result");
                            }
                        }
                    }
                    if last_tick.elapsed() >= tick {
                        last_tick = Instant::now();
                        device_work(&mut spent, || device.tick(None))?;
                    }
                    publish_all(&mut link, &mut device)?;
                    if let Some((opened, class)) = delivered
                        && opened == t
                    {
                        tracing::debug!(
                            frame = t,
                            wall_ms = started.elapsed().as_secs_f64() * 1e3,
                            "result decoded"
                        );
                        break (Some(class), started.elapsed());
                    }
                };
                wait_quiet(&[&server_a, &server_b])?;
                let after = link.settle()?;
                for token in link.take_confirmed() {
                    device_work(&mut spent, || device.handle(NodeInput::Confirmed(token)))?;
                }
                publish_all(&mut link, &mut device)?;
                let traffic = after.since(&before);
                before = after;
                if i < warmup {
                    warmup_received.push(got.clone());
                }
                log.record(i, spent, capture, wall, &traffic, class, got);
            }
            // The session's end: the acknowledgement of its last result, which
            // no frame carries, goes on its own when the node's timer fires.
            let mut end_cpu = Duration::ZERO;
            let due = device.node.poll_timeout();
            device_work(&mut end_cpu, || device.tick(due))?;
            publish_all(&mut link, &mut device)?;
            wait_quiet(&[&server_a, &server_b])?;
            let end = link.settle()?.since(&before);
            let setup = SetupCost {
                end_cpu_us: end_cpu.as_secs_f64() * 1e6,
                end_bytes_sent: end.sent,
                end_bytes_received: end.received,
                ..setup
            };
            check_servers(&[&server_a, &server_b])?;
            let FrameLog {
                frames, received, ..
            } = log;
            let n = frames.len();
            let cost = server_cost(
                server_a.snapshot().since(&a_start),
                Some(server_b.snapshot().since(&b_start)),
                n,
            );
            link.disconnect();
            Ok((
                setup,
                frames,
                received,
                warmup_received,
                sessions,
                sid,
                cost,
            ))
        })?;
    server_a.stop()?;
    server_b.stop()?;
    Ok((
        Run {
            report: ApproachReport::from_frames(setup, frames, cost),
            received,
        },
        VeilReplayState {
            config,
            sessions,
            current: Some(sid),
            warmup_received,
        },
    ))
}
