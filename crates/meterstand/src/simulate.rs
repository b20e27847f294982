//! `meterstand simulate`: publishes realistic readings for N simulated connections to any
//! broker, QoS 1, repeatable from a seed.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use jiff::Timestamp;
use meterstand_codec::{Format, WirePayload, WireReading, encode, p1};
use meterstand_ingest::{BrokerUrl, tls_transport_from_pem};
use meterstand_model::sim::SimMeter;
use meterstand_model::{Calendar, MeterId, Reading, Register};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Broker to publish to: `mqtt://host:port`, or `mqtts://` with --ca-file (IPv6 in
    /// brackets: `mqtt://[::1]:1883`).
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub broker: BrokerUrl,
    /// PEM CA that signed an mqtts:// broker's certificate.
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Topic prefix: messages go to {prefix}/{ean}/{format}.
    #[arg(long, default_value = "meters")]
    pub prefix: String,
    /// Number of simulated connections.
    #[arg(long, default_value_t = 100)]
    pub meters: u64,
    /// First local day to simulate (YYYY-MM-DD); default: `days` days before today.
    #[arg(long)]
    pub from: Option<jiff::civil::Date>,
    /// Number of days to simulate.
    #[arg(long, default_value_t = 1)]
    pub days: u32,
    /// Payload format. `p1`: one DSMR 5 telegram per connection per quarter-hour, captured
    /// on the boundary, to {prefix}/{ean}/p1 (`--quarters-per-message` does not apply).
    #[arg(long, value_parser = ["json", "bincode", "p1"], default_value = "json")]
    pub format: String,
    /// Quarter-hours per message (96: one message per connection per day; 1: one per reading
    /// time). Ignored for `--format p1`.
    #[arg(long, default_value_t = 96)]
    pub quarters_per_message: u32,
    /// Messages per second at most (0: as fast as the broker takes them).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Seed of the simulated population (same seed, same connections and readings).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SimulateReport {
    pub messages: u64,
    pub readings: u64,
}

/// MQTT 3.1.1 options for publishing to `broker` (the same parser and TLS setup as
/// ingest's): mqtts:// needs the CA that signed the broker's certificate.
pub fn publisher_options(
    client_id: impl Into<String>,
    broker: &BrokerUrl,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<MqttOptions> {
    let mut options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    if broker.tls {
        let path = ca_file.context("an mqtts:// broker needs --ca-file")?;
        let ca = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        options.set_transport(tls_transport_from_pem(ca, None));
    }
    Ok(options)
}

/// The simulated population of these arguments.
pub fn population(args: &SimulateArgs) -> Vec<SimMeter> {
    (0..args.meters)
        .map(|i| SimMeter::new(i, args.seed))
        .collect()
}

/// One DSMR 5 telegram captured at `t` (a quarter-hour boundary) with the electricity
/// registers of `readings` and the meter's last hourly gas reading (updated from
/// `readings` when it holds one).
pub fn p1_telegram(
    meter: &MeterId,
    t: Timestamp,
    readings: &[Reading],
    last_gas: &mut Option<(Timestamp, u64)>,
) -> String {
    let mut electricity = Vec::with_capacity(4);
    for r in readings {
        if r.register == Register::Gas {
            *last_gas = Some((r.time, r.value));
        } else {
            electricity.push((r.register, r.value));
        }
    }
    p1::encode_dsmr5(meter, t, &electricity, *last_gas)
}

/// The simulated range: local midnight of `--from` (default: `--days` before today) to
/// local midnight `--days` later, which must not lie in the future.
fn simulated_range(args: &SimulateArgs, calendar: &Calendar) -> anyhow::Result<(Timestamp, i64)> {
    let from = match args.from {
        Some(d) => d,
        None => calendar
            .date_of(Timestamp::now())
            .checked_sub(jiff::Span::new().days(i64::from(args.days)))
            .context("--days too large")?,
    };
    let start = calendar.date_start(from)?;
    let end_date = from
        .checked_add(jiff::Span::new().days(i64::from(args.days)))
        .context("--days too large")?;
    let end = calendar.date_start(end_date)?;
    if end > Timestamp::now() {
        bail!("the simulated range ends in the future; pick an earlier --from");
    }
    Ok((start, (end.as_second() - start.as_second()) / 900))
}

/// A QoS 1 publisher whose poll loop counts the broker's PUBACKs.
struct AckedPublisher {
    client: AsyncClient,
    acked: tokio::sync::watch::Receiver<u64>,
    poller: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl AckedPublisher {
    fn connect(args: &SimulateArgs) -> anyhow::Result<AckedPublisher> {
        let mut options = publisher_options(
            format!("meterstand-simulate-{}", std::process::id()),
            &args.broker,
            args.ca_file.as_deref(),
        )?;
        options.set_keep_alive(Duration::from_secs(30));
        options.set_inflight(1000);
        options.set_max_packet_size(1 << 20, 16 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let (acked_tx, acked) = tokio::sync::watch::channel(0u64);
        let poller = tokio::spawn(async move {
            let mut acked = 0u64;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked += 1;
                        let _ = acked_tx.send(acked);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(anyhow::anyhow!("broker connection failed: {e}")),
                }
            }
        });
        Ok(AckedPublisher {
            client,
            acked,
            poller,
        })
    }

    /// Waits for `target` PubAcks (the broker has taken responsibility for each message),
    /// then disconnects.
    async fn finish(mut self, target: u64) -> anyhow::Result<()> {
        let waited = tokio::time::timeout(
            Duration::from_secs(300),
            self.acked.wait_for(|a| *a >= target),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !waited {
            bail!(
                "the broker acknowledged only {} of {} messages within 5 minutes",
                *self.acked.borrow(),
                target
            );
        }
        self.client.disconnect().await?;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.poller).await;
        Ok(())
    }
}

fn progress_bar(hidden: bool, total: u64) -> indicatif::ProgressBar {
    let progress = if hidden {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} messages {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<SimulateReport> {
    if args.quarters_per_message == 0 || args.quarters_per_message > 2976 {
        bail!("--quarters-per-message must be 1 to 2976 (a month)");
    }
    let calendar = Calendar::amsterdam();
    let format = match args.format.as_str() {
        "bincode" => Format::Bincode,
        "p1" => Format::P1,
        _ => Format::Json,
    };
    let (start, quarters) = simulated_range(&args, &calendar)?;
    let publisher = AckedPublisher::connect(&args)?;
    let mut meters = population(&args);
    let meter_ids = meters
        .iter()
        .map(|m| m.meter_id.parse::<MeterId>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| anyhow::anyhow!("a simulated meter id does not parse"))?;
    // P1: the last hourly gas reading of each meter, repeated in every telegram as a real
    // meter does until the next one.
    let mut last_gas: Vec<Option<(Timestamp, u64)>> = vec![None; meters.len()];
    let step = if format == Format::P1 {
        1
    } else {
        i64::from(args.quarters_per_message)
    };
    let progress = progress_bar(args.quiet, (quarters / step + 1) as u64 * args.meters);
    let started = Instant::now();
    let mut report = SimulateReport::default();
    // Chunks of quarter-hours; the first chunk also carries the start boundary itself.
    let mut q = 0i64;
    while q <= quarters {
        let chunk_end = (q + step).min(quarters + 1);
        for (k, m) in meters.iter_mut().enumerate() {
            let mut readings = Vec::new();
            for i in q..chunk_end {
                let t = Timestamp::from_second(start.as_second() + i * 900)?;
                readings.extend(m.step(t));
            }
            let body = if format == Format::P1 {
                let t = Timestamp::from_second(start.as_second() + q * 900)?;
                p1_telegram(&meter_ids[k], t, &readings, &mut last_gas[k]).into_bytes()
            } else {
                let payload = WirePayload {
                    meter: Cow::Borrowed(&m.meter_id),
                    readings: readings.iter().map(WireReading::from_reading).collect(),
                };
                encode(format, &payload)
            };
            let topic = format!("{}/{}/{}", args.prefix, m.ean.expose(), format.as_str());
            publisher
                .client
                .publish(topic, QoS::AtLeastOnce, false, body)
                .await?;
            report.messages += 1;
            report.readings += readings.len() as u64;
            progress.inc(1);
            if args.rate > 0 {
                let due = Duration::from_secs_f64(report.messages as f64 / args.rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        q = chunk_end;
    }
    let finished = publisher.finish(report.messages).await;
    progress.finish_and_clear();
    finished?;
    if !args.quiet {
        eprintln!(
            "published {} messages with {} readings in {:.1}s",
            report.messages,
            report.readings,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterstand_codec::{Limits, decode};

    /// The simulator reads the broker address with the service's own parser: IPv6 in
    /// brackets, and mqtts:// only with the CA that signed the broker's certificate.
    #[test]
    fn publishes_to_any_broker_address_the_service_accepts() {
        let url: BrokerUrl = "mqtt://[::1]:1884".parse().expect("url");
        let options = publisher_options("sim", &url, None).expect("options");
        assert_eq!(options.broker_address(), ("::1".to_string(), 1884));
        let tls: BrokerUrl = "mqtts://broker.example".parse().expect("url");
        let e = publisher_options("sim", &tls, None).expect_err("no CA");
        assert!(e.to_string().contains("--ca-file"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").expect("ca");
        let options = publisher_options("sim", &tls, Some(&ca)).expect("with CA");
        assert_eq!(
            options.broker_address(),
            ("broker.example".to_string(), 8883)
        );
        assert!(matches!(options.transport(), rumqttc::Transport::Tls(_)));
        assert!("http://x".parse::<BrokerUrl>().is_err());
    }

    /// A simulated telegram decodes to the very readings the simulator drew, gas included
    /// on the hour and repeated (idempotently) after it.
    #[test]
    fn p1_telegrams_decode_to_the_simulated_readings() {
        let calendar = Calendar::amsterdam();
        let limits = Limits::default();
        let mut meter = (0..50)
            .map(|i| SimMeter::new(i, 1))
            .find(|m| m.gas && m.solar)
            .expect("a meter with gas and solar");
        let id: MeterId = meter.meter_id.parse().expect("meter id");
        let mut last_gas = None;
        let start: Timestamp = "2026-01-14T23:00:00Z".parse().expect("t");
        for i in 0..6 {
            let t = Timestamp::from_second(start.as_second() + i * 900).expect("t");
            let readings = meter.step(t);
            let text = p1_telegram(&id, t, &readings, &mut last_gas);
            let now = Timestamp::from_second(t.as_second() + 60).expect("t");
            let decoded =
                decode(Format::P1, text.as_bytes(), now, &calendar, &limits).expect("decodes");
            assert_eq!(decoded.meter, id);
            let mut got: Vec<Reading> = decoded.readings.iter().map(|r| r.reading).collect();
            let mut want = readings.clone();
            if i > 0 && i % 4 != 0 {
                // The hour's gas reading repeats in every telegram of that hour.
                let (time, value) = last_gas.expect("gas on the hour");
                want.push(Reading {
                    register: Register::Gas,
                    time,
                    value,
                });
            }
            got.sort();
            want.sort();
            assert_eq!(got, want, "quarter {i}");
        }
    }
}
