//! The conventional baseline's run: its server A and its device.

use super::*;

/// Runs the conventional baseline: its server A and the device, over the
/// broker. Returns the run and the device's secret key (for replay).
pub fn run_conventional(
    broker: SocketAddr,
    model: &Model,
    inputs: &[Input],
    warmup: usize,
    placement: &Placement,
    quiet: bool,
) -> Result<(Run, SecretKey, SessionId)> {
    let topology: Arc<Topology> = Arc::new(model.topology().clone());
    let server = ConvServer::new(ConvServerConfig {
        topology: Arc::clone(&topology),
        plan: Arc::new(model.plan().clone()),
    })?;
    let server_a = ServerHandle::spawn(
        broker,
        "server-a",
        "server-a-bench-conv",
        2,
        ConvA { server },
    )?;
    let (setup, frames, received, cost, key, sid) = on_device_thread(placement, || {
        let mut device = ConvDevice::new(DEVICE_USER, Arc::clone(&topology), KeySize::Bits2048)?;
        let mut link = Link::connect(
            broker,
            DEVICE_USER,
            &format!("{DEVICE_USER}-bench-conv"),
            placement.others(),
        )?;
        link.subscribe(&[&conv_down(DEVICE_USER)])?;
        let before_setup = link.settle()?;

        progress(quiet, "conventional: device generates its key pair...");
        let mut setup_cpu = Duration::ZERO;
        let started = Instant::now();
        let session = device_work(&mut setup_cpu, || -> Result<Vec<u8>> {
            Ok(device.open_session(&mut rand::rng())?.to_bytes()?)
        })?;
        link.publish(&conv_up(DEVICE_USER, "session"), session, true)?;
        while link.acked < link.published {
            link.poll(Duration::from_millis(20))?;
        }
        let setup_wall = started.elapsed();
        wait_quiet(&[&server_a])?;
        let after_setup = link.settle()?;
        let setup_traffic = after_setup.since(&before_setup);
        let mut samples = vec![setup_cpu];
        for _ in 1..SETUP_SAMPLES {
            let mut scratch =
                ConvDevice::new(DEVICE_USER, Arc::clone(&topology), KeySize::Bits2048)?;
            let mut spent = Duration::ZERO;
            device_work(&mut spent, || -> Result<()> {
                std::hint::black_box(scratch.open_session(&mut rand::rng())?.to_bytes()?);
                Ok(())
            })?;
            samples.push(spent);
        }
        let setup = setup_cost(&samples, setup_wall, setup_traffic);
        check_servers(&[&server_a])?;

        let mut log = FrameLog::new("conventional", inputs.len(), warmup, quiet);
        let mut a_start = server_a.snapshot();
        let mut before = link.settle()?;
        for (i, input) in inputs.iter().enumerate() {
            if i == warmup {
                a_start = server_a.snapshot();
            }
            let t = i as u64;
            let mut spent = Duration::ZERO;
            let started = Instant::now();
            let frame = device_work(&mut spent, || -> Result<Vec<u8>> {
                Ok(device
                    .start_frame(&input.x_hat, t, &mut rand::rng())?
                    .to_bytes()?)
            })?;
            let capture = spent;
            link.publish(&conv_up(DEVICE_USER, "data"), frame, false)?;
            let mut got = Vec::new();
            let (class, wall) = loop {
                match link.poll(Duration::from_millis(50))? {
                    Polled::Message { topic, payload } if topic == conv_down(DEVICE_USER) => {
                        let step = device_work(&mut spent, || -> Result<_> {
                            let envelope = ConvEnvelope::from_bytes(&payload)?;
                            Ok(match device.on_message(&envelope, &mut rand::rng())? {
                                ConvStep::Send(next) => Err(next.to_bytes()?),
                                ConvStep::Done { t, outputs } => Ok((t, argmax(&outputs))),
                            })
                        })?;
                        got.push(payload);
                        match step {
                            Err(next) => {
                                link.publish(&conv_up(DEVICE_USER, "data"), next, false)?
                            }
                            Ok((done_t, class)) if done_t == t => break (class, started.elapsed()),
                            Ok(_) => {}
                        }
                    }
                    Polled::Message { topic, .. } => bail!("unexpected message on {topic}"),
                    _ => {
                        check_servers(&[&server_a])?;
                        if started.elapsed() > Duration::from_secs(1800) {
                            bail!("frame {t}: no result");
                        }
                    }
                }
            };
            wait_quiet(&[&server_a])?;
            let after = link.settle()?;
            let traffic = after.since(&before);
            before = after;
            log.record(i, spent, capture, wall, &traffic, class, got);
        }
        check_servers(&[&server_a])?;
        let FrameLog {
            frames, received, ..
        } = log;
        let cost = server_cost(server_a.snapshot().since(&a_start), None, frames.len());
        link.disconnect();
        let sid = device
            .sid()
            .ok_or_else(|| anyhow!("no session after opening one"))?;
        let key_bytes = device
            .secret_key()
            .ok_or_else(|| anyhow!("no key after opening a session"))?
            .to_bytes();
        let key = SecretKey::from_bytes(&key_bytes)?;
        Ok((setup, frames, received, cost, key, sid))
    })?;
    server_a.stop()?;
    Ok((
        Run {
            report: ApproachReport::from_frames(setup, frames, cost),
            received,
        },
        key,
        sid,
    ))
}
