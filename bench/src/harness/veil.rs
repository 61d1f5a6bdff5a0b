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
}

/// Runs veil: servers A and B and the device, over the broker.
pub fn run_veil(
    broker: SocketAddr,
    model: &Model,
    inputs: &[Input],
    warmup: usize,
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
        PaillierPublic::new(
            public_b.clone(),
            pooled_noise(&public_b, 1024),
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
    let (setup, frames, received, sessions, sid, cost) = on_device_thread(|| {
        let mut device = Device::new(device_config)?;
        let mut link = Link::connect(broker, DEVICE_USER, &format!("{DEVICE_USER}-bench-veil"))?;
        link.subscribe(&[&topics::result(DEVICE_USER)])?;
        let before_setup = link.settle()?;

        // Session set-up: the two seed encryptions and their messages.
        let mut setup_cpu = Duration::ZERO;
        let started = Instant::now();
        let messages = device_work(&mut setup_cpu, || -> Result<Vec<(String, Vec<u8>)>> {
            let init = device.open_session(0, &mut rand::rng())?;
            init.into_iter()
                .map(|o| {
                    let server = if o.to == Peer::ServerA { 'a' } else { 'b' };
                    Ok((topics::session(DEVICE_USER, server), o.envelope.to_bytes()?))
                })
                .collect()
        })?;
        for (topic, payload) in messages {
            link.publish(&topic, payload, true)?;
        }
        while link.acked < link.published {
            link.poll(Duration::from_millis(20))?;
        }
        let setup_wall = started.elapsed();
        wait_quiet(&[&server_a, &server_b])?;
        let after_setup = link.settle()?;
        let setup_traffic = after_setup.since(&before_setup);
        let mut samples = vec![setup_cpu];
        for _ in 1..SETUP_SAMPLES {
            let mut scratch = Device::new(device.config().clone())?;
            let mut spent = Duration::ZERO;
            device_work(&mut spent, || -> Result<()> {
                for out in scratch.open_session(0, &mut rand::rng())? {
                    std::hint::black_box(out.envelope.to_bytes()?);
                }
                Ok(())
            })?;
            samples.push(spent);
        }
        let setup = setup_cost(&samples, setup_wall, setup_traffic);
        check_servers(&[&server_a, &server_b])?;
        let sid = device
            .current()
            .map(|s| s.sid)
            .ok_or_else(|| anyhow!("no session after opening one"))?;
        let sessions: Vec<DeviceSession> = device.sessions().cloned().collect();

        let mut log = FrameLog::new("veil", inputs.len(), warmup, quiet);
        let mut a_start = server_a.snapshot();
        let mut b_start = server_b.snapshot();
        let mut before = link.settle()?;
        let mut device = VeilDevice::new(device);
        for (i, input) in inputs.iter().enumerate() {
            if i == warmup {
                a_start = server_a.snapshot();
                b_start = server_b.snapshot();
            }
            let t = i as u64;
            let mut spent = Duration::ZERO;
            let started = Instant::now();
            let frame = device_work(&mut spent, || -> Result<&[u8]> {
                device.capture(&input.x_hat, t)
            })?
            .to_vec();
            let capture = spent;
            link.publish(&topics::frame(DEVICE_USER), frame, false)?;
            let mut got = Vec::new();
            let (class, wall) = loop {
                match link.poll(Duration::from_millis(50))? {
                    Polled::Message { topic, payload } if topic == topics::result(DEVICE_USER) => {
                        let (opened_t, class) =
                            device_work(&mut spent, || device.result(&payload))?;
                        let wall = started.elapsed();
                        got.push(payload);
                        if opened_t == t {
                            break (Some(class), wall);
                        }
                    }
                    Polled::Message { topic, .. } => bail!("unexpected message on {topic}"),
                    _ => {
                        check_servers(&[&server_a, &server_b])?;
                        if started.elapsed() > Duration::from_secs(1800) {
                            bail!("frame {t}: no result");
                        }
                    }
                }
            };
            wait_quiet(&[&server_a, &server_b])?;
            let after = link.settle()?;
            let traffic = after.since(&before);
            before = after;
            log.record(i, spent, capture, wall, &traffic, class, got);
        }
        // The session's end: the acknowledgement of its last result, which
        // no frame carries, goes on its own (the device node's timer).
        let mut end_cpu = Duration::ZERO;
        let acks = device_work(&mut end_cpu, || -> Result<Vec<Vec<u8>>> {
            device
                .take_acks()
                .into_iter()
                .map(|(sid, t)| Ok(device.device.ack(sid, t).envelope.to_device_bytes()?))
                .collect()
        })?;
        for ack in acks {
            link.publish(&topics::ack(DEVICE_USER), ack, false)?;
        }
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
        Ok((setup, frames, received, sessions, sid, cost))
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
        },
    ))
}
