//! `meterstand demo`: embedded broker, simulated meters and the whole service in one process.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meterstand_api::dto::StatisticsResponse;
use meterstand_ingest::BrokerUrl;
use meterstand_model::{Calendar, ConsentLevel};
use meterstand_pseudonym::KeyRing;
use rumqttc::{AsyncClient, QoS};

use crate::client::Client;
use crate::config::Config;
use crate::service::Service;
use crate::simulate::{self, SimulateArgs};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Simulated connections.
    #[arg(long, default_value_t = 1000)]
    pub meters: u64,
    /// Days of history to publish: the last N local days that ended at least
    /// `statistics.settle` ago. The demo sets `statistics.settle` to 1m and
    /// `statistics.quiet` to 5s (unless METERSTAND__STATISTICS__SETTLE or __QUIET say
    /// otherwise), so the freeze publishes these days within seconds and the summary shows
    /// the analyst's statistics.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=366))]
    pub days: u32,
    /// Directory for the demo's key and data (default: a fresh temporary directory).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Exit after printing the summary instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What the demo set up before the service starts: its directory, broker, configuration,
/// the history's local dates and a token per role.
struct Setup {
    dir: std::path::PathBuf,
    broker: BrokerUrl,
    config: Config,
    env: BTreeMap<String, String>,
    calendar: Calendar,
    /// First day of the history and the day after its last.
    range: (jiff::civil::Date, jiff::civil::Date),
    token_dir: std::path::PathBuf,
    tokens: BTreeMap<&'static str, String>,
}

impl Setup {
    fn new(
        args: &DemoArgs,
        config_file: Option<&Path>,
        mut env: BTreeMap<String, String>,
    ) -> anyhow::Result<Setup> {
        let dir = match &args.dir {
            Some(d) => d.clone(),
            None => tempfile_dir()?,
        };
        let key_file = dir.join("keys").join("master.key");
        std::fs::create_dir_all(key_file.parent().context("key dir")?)?;
        if !key_file.exists() {
            KeyRing::generate()?.create(&key_file)?;
        }
        let broker = BrokerUrl::mqtt("127.0.0.1", free_port()?);
        env.insert("METERSTAND__BROKER__EMBEDDED".into(), "true".into());
        env.insert("METERSTAND__BROKER__URL".into(), broker.to_string());
        env.insert(
            "METERSTAND__STORE__PATH".into(),
            dir.join("data").display().to_string(),
        );
        env.insert("METERSTAND_KEY_FILE".into(), key_file.display().to_string());
        env.entry("METERSTAND__LOG__LEVEL".into())
            .or_insert_with(|| "warn,rumqttd=off".into());
        // Statistics within seconds rather than days: a day is frozen once `settle` has
        // passed since it ended and `quiet` since its last write. The shortest settle
        // allowed, and a quiet long enough that a day is not frozen while the history is
        // still arriving.
        env.entry("METERSTAND__STATISTICS__SETTLE".into())
            .or_insert_with(|| "1m".into());
        env.entry("METERSTAND__STATISTICS__QUIET".into())
            .or_insert_with(|| "5s".into());
        let mut config = Config::load(config_file, &env)?;
        let calendar = config.privacy.timezone.clone();
        let range = history_range(
            &calendar,
            config.statistics.settle,
            args.days,
            jiff::Timestamp::now(),
        )?;
        if std::net::TcpListener::bind(config.api.listen).is_err() {
            config.api.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        }
        // One token per role, in files beside the data, so the API can be tried by hand.
        let token_dir = dir.join("tokens");
        std::fs::create_dir_all(&token_dir)?;
        let mut tokens = BTreeMap::new();
        for role in meterstand_api::Role::ALL {
            let token = crate::client::generate_token()?;
            crate::client::write_private(
                &token_dir.join(format!("{}.token", role.as_str())),
                format!("{token}\n").as_bytes(),
                false,
            )?;
            config.api.tokens.push(crate::config::TokenEntry {
                id: format!("demo-{}", role.as_str()),
                role,
                hash: meterstand_api::hash_token(&token),
                file: None,
            });
            tokens.insert(role.as_str(), token);
        }
        config.api.metrics_require_token = false;
        config.api.audit_log = dir.join("audit.jsonl");
        config.store.journal = dir.join("subject-journal.jsonl");
        config.backup.dir = dir.join("backups");
        Ok(Setup {
            dir,
            broker,
            config,
            env,
            calendar,
            range,
            token_dir,
            tokens,
        })
    }
    /// The simulator's arguments for the demo's history.
    fn simulation(&self, args: &DemoArgs) -> SimulateArgs {
        SimulateArgs {
            broker: self.broker.clone(),
            ca_file: None,
            prefix: self.config.broker.topic_prefix.clone(),
            meters: args.meters,
            from: Some(self.range.0),
            days: args.days,
            // Bincode, not JSON: the embedded broker keeps the messages it delivered in
            // memory (rumqttd's log segments), so the history's bytes are much of the demo's
            // memory (the default week: a peak of about 180 MB rather than 280 MB with JSON).
            format: "bincode".into(),
            quarters_per_message: 96,
            rate: 0,
            seed: 1,
            quiet: false,
        }
    }
}

pub async fn run(
    args: DemoArgs,
    config_file: Option<&Path>,
    env: BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let setup = Setup::new(&args, config_file, env)?;
    let (config, (from, to)) = (&setup.config, setup.range);
    crate::service::init_logging(config)?;
    println!(
        "meterstand demo: embedded broker on {}, data in {}",
        setup.broker,
        setup.dir.display()
    );
    let service = Service::start(config, &setup.env).await?;
    // Subscribed, not just connected: the embedded broker drops what is published before
    // the subscription exists.
    wait_for(Duration::from_secs(20), || service.status.is_receiving())
        .await
        .context("the service did not subscribe at the embedded broker within 20 s")?;

    let sim = setup.simulation(&args);
    let api_base = format!("http://{}", service.api_addr);
    let population = simulate::population(&sim);
    register(&api_base, &setup.tokens["crm"], &population).await?;
    announce_history(args.days, (from, to))?;

    let report = simulate::run(sim.clone()).await?;
    // A synthetic EAN of the simulator's range, one past the population (not registered).
    let unregistered = meterstand_model::sim::SimMeter::ean_of(args.meters, sim.seed);
    let bad =
        publish_bad_messages(&setup.broker, &config.broker.topic_prefix, &unregistered).await?;
    let expected = report.messages + bad;
    let acked = || {
        service
            .status
            .acked
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    wait_for(Duration::from_secs(120), || acked() >= expected)
        .await
        .with_context(|| {
            format!(
                "ingest acknowledged only {} of {expected} messages",
                acked()
            )
        })?;
    let analyst = Client::with_token(api_base, setup.tokens["analyst"].clone())?;
    let quiet = config.statistics.quiet;
    println!(
        "waiting for the statistics freeze: a day is frozen statistics.settle ({}) after it ends and statistics.quiet ({}) after its last write",
        humantime::format_duration(config.statistics.settle),
        humantime::format_duration(quiet),
    );
    // The freeze looks every `quiet` (1 to 60 s); a backlog is frozen in slices.
    let within = Duration::from_secs(120 + u64::from(args.days)) + 2 * quiet;
    let waited = wait_for_freeze(&analyst, (from, to), u64::from(args.days), within).await?;
    println!(
        "{} frozen {:.1} s after the last reading was stored",
        if args.days == 1 {
            "the day"
        } else {
            "the days"
        },
        waited.as_secs_f64()
    );
    print_summary(
        &service,
        config,
        &setup.calendar,
        (from, to),
        report.readings,
        &analyst,
    )
    .await?;
    let sample = population.first().map(|m| m.ean.expose().to_string());
    print_where_to_look(
        &setup,
        service.api_addr,
        sample.as_deref().unwrap_or_default(),
    );

    if args.exit {
        return service.shutdown().await;
    }
    println!("\nserving until Ctrl-C");
    crate::service::wait_for_signal().await;
    service.shutdown().await
}

/// Says which days of history the demo publishes.
fn announce_history(days: u32, (from, to): Range) -> anyhow::Result<()> {
    let last = to.checked_sub(jiff::Span::new().days(1))?;
    let (days, dates) = match days {
        1 => ("1 day".to_string(), from.to_string()),
        n => (format!("{n} days"), format!("{from} to {last}")),
    };
    println!(
        "publishing {days} of their readings ({dates}, a message per connection per day) to the embedded broker"
    );
    Ok(())
}

/// Polls `done` every 50 ms; `Err` when it did not hold within `within`.
async fn wait_for(within: Duration, done: impl Fn() -> bool) -> anyhow::Result<()> {
    tokio::time::timeout(within, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("timed out after {within:?}"))
}

/// The CRM's part, through the API: each connection's consent, postcode and profile, 16
/// calls at a time.
async fn register(
    api_base: &str,
    crm_token: &str,
    population: &[meterstand_model::sim::SimMeter],
) -> anyhow::Result<()> {
    let crm = std::sync::Arc::new(Client::with_token(
        api_base.to_string(),
        crm_token.to_string(),
    )?);
    let mut pending = tokio::task::JoinSet::new();
    for m in population {
        if pending.len() >= 16
            && let Some(done) = pending.join_next().await
        {
            done??;
        }
        let (crm, path) = (crm.clone(), format!("/v1/connections/{}", m.ean.expose()));
        let body = serde_json::json!({
            "consent": m.consent.as_str(),
            "postcode4": m.postcode4.to_string(),
            "profile": m.profile,
        });
        pending.spawn(async move {
            crm.send(reqwest::Method::PUT, &path, Some(body))
                .await
                .map(|_| ())
        });
    }
    while let Some(done) = pending.join_next().await {
        done??;
    }
    let consents = |levels: &[ConsentLevel]| {
        population
            .iter()
            .filter(|m| levels.contains(&m.consent))
            .count()
    };
    println!(
        "registered {} connections through PUT /v1/connections (consent: {} off, {} standard, {} daily, {} interval; day statistics count the daily and interval ones)",
        population.len(),
        consents(&[ConsentLevel::Off]),
        consents(&[ConsentLevel::Standard]),
        consents(&[ConsentLevel::Daily]),
        consents(&[ConsentLevel::Interval]),
    );
    Ok(())
}

/// Ready-to-paste commands for the API, the broker and the audit log.
fn print_where_to_look(setup: &Setup, api: std::net::SocketAddr, sample_ean: &str) {
    let t = setup.token_dir.display();
    let (from, to) = setup.range;
    println!("\n== where to look");
    println!("api        http://{api}/openapi.json");
    println!(
        "metrics    http://{api}/metrics   readiness http://{api}/readyz   health http://{api}/healthz"
    );
    println!(
        "statistics curl -H \"Authorization: Bearer $(cat {t}/analyst.token)\" 'http://{api}/v1/statistics?from={from}&to={to}&group_by=postcode4,profile&format=csv'"
    );
    println!(
        "export     meterstand subject export --ean {sample_ean} --server http://{api} --token-file {t}/privacy_officer.token"
    );
    println!(
        "broker     {} (publish to {}/<ean>/json)",
        setup.broker, setup.config.broker.topic_prefix
    );
    println!("audit log  {}", setup.config.api.audit_log.display());
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("meterstand-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// One of each kind of bad input, to show that rejects are counted, not lost or looping.
async fn publish_bad_messages(
    broker: &BrokerUrl,
    prefix: &str,
    good_ean: &meterstand_model::Ean,
) -> anyhow::Result<u64> {
    let options = simulate::publisher_options("meterstand-demo-bad", broker, None)?;
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let mut bad_check = good_ean.expose().to_string();
    bad_check.replace_range(17.., if bad_check.ends_with('0') { "1" } else { "0" });
    let future = jiff::Timestamp::now().as_second() / 900 * 900 + 86_400;
    let reading = |obis: &str, time: String, value: &str, unit: &str| {
        format!(
            r#"{{"meter":"E0000000000000001","readings":[{{"obis":"{obis}","time":"{time}","value":"{value}","unit":"{unit}"}}]}}"#
        )
    };
    let now_q = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() / 900 * 900 - 900)?
        .to_string();
    let messages = vec![
        (
            format!("{prefix}/{bad_check}/json"),
            reading("1-0:1.8.1", now_q.clone(), "1.000", "kWh"),
        ),
        (
            format!("{prefix}/{}/json", good_ean.expose()),
            "{not json".to_string(),
        ),
        (
            format!("{prefix}/{}/json", good_ean.expose()),
            reading("1-0:1.8.1", now_q.clone(), "1.000", "m3"),
        ),
        (
            format!("{prefix}/{}/json", good_ean.expose()),
            reading(
                "1-0:1.8.1",
                jiff::Timestamp::from_second(future)?.to_string(),
                "1.000",
                "kWh",
            ),
        ),
        (
            format!("{prefix}/{}/json", good_ean.expose()),
            reading("1-0:1.8.1", now_q, "-3", "kWh"),
        ),
    ];
    let count = messages.len() as u64;
    for (topic, payload) in messages {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
    }
    let mut acks = 0;
    tokio::time::timeout(Duration::from_secs(10), async {
        while acks < count {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = eventloop.poll().await
            {
                acks += 1;
            }
        }
    })
    .await
    .context("the broker did not acknowledge the demo's bad messages")?;
    let _ = client.disconnect().await;
    Ok(count)
}

/// Local dates `[from, to)`.
type Range = (jiff::civil::Date, jiff::civil::Date);

/// The demo's history: the last `days` local days that ended at least `settle` ago, so that
/// the freeze publishes each of them as soon as it is quiet.
fn history_range(
    calendar: &Calendar,
    settle: Duration,
    days: u32,
    now: jiff::Timestamp,
) -> anyhow::Result<Range> {
    let settle = i64::try_from(settle.as_secs()).context("statistics.settle")?;
    let to = calendar.date_of(jiff::Timestamp::from_second(now.as_second() - settle)?);
    let from = to.checked_sub(jiff::Span::new().days(i64::from(days)))?;
    Ok((from, to))
}

/// Import per day over `range`, as an analyst asks for it; `group_by` as the API takes it.
async fn import_per_day(
    analyst: &Client,
    (from, to): Range,
    group_by: &str,
) -> anyhow::Result<StatisticsResponse> {
    let body = analyst
        .send(
            reqwest::Method::GET,
            &format!(
                "/v1/statistics?from={from}&to={to}&granularity=day&register=import&group_by={group_by}"
            ),
            None,
        )
        .await?;
    serde_json::from_str(&body).context("statistics answer")
}

/// Waits until the freeze has published the import statistics of each of the `days` days of
/// `range`; answers how long that took.
async fn wait_for_freeze(
    analyst: &Client,
    range: Range,
    days: u64,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let frozen = import_per_day(analyst, range, "").await?.periods;
        if frozen >= days {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= within {
            bail!(
                "only {frozen} of the {days} published days were frozen within {} s. The freeze \
                 publishes a day once statistics.settle has passed since it ended and \
                 statistics.quiet since its last write, if a connection with daily or interval \
                 consent counts in it; METERSTAND__LOG__LEVEL=info logs each freeze",
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn print_summary(
    service: &Service,
    config: &Config,
    calendar: &Calendar,
    range: Range,
    published: u64,
    analyst: &Client,
) -> anyhow::Result<()> {
    print_ingested(service, published);
    print_statistics(config, calendar, range, analyst).await
}

/// What ingest stored, dropped by consent and rejected.
fn print_ingested(service: &Service, published: u64) {
    let totals = service.status.totals();
    println!("\n== ingested");
    println!("published readings       {published}");
    println!(
        "stored tier entries      interval {:>9}  day {:>7}  month {:>6}",
        totals.stored.interval, totals.stored.day, totals.stored.month
    );
    println!(
        "dropped by consent       interval {:>9}  day {:>7}  month {:>6}",
        totals.dropped_by_consent.interval,
        totals.dropped_by_consent.day,
        totals.dropped_by_consent.month
    );
    println!(
        "duplicates {}  conflicts {}",
        totals.duplicates, totals.conflicts
    );
    print!("rejected messages        ");
    for r in meterstand_codec::Reject::ALL {
        let n = meterstand_ingest::metrics::REJECTED
            .with_label_values(&[r.reason()])
            .get();
        if n > 0 {
            print!("{}={n} ", r.reason());
        }
    }
    println!();
}

/// The analyst's view: import per day, and by area on the last day.
async fn print_statistics(
    config: &Config,
    calendar: &Calendar,
    range: Range,
    analyst: &Client,
) -> anyhow::Result<()> {
    let kwh = |wh: u64| wh as f64 / 1000.0;
    let day_of = |period_start: &str| -> String {
        period_start
            .parse::<jiff::Timestamp>()
            .map(|t| calendar.date_of(t).to_string())
            .unwrap_or_else(|_| period_start.to_string())
    };
    println!(
        "\n== what an analyst sees (GET /v1/statistics): frozen days, every row at least {} connections",
        config.privacy.min_group_size
    );
    let total = import_per_day(analyst, range, "").await?;
    println!("import per day, all areas");
    println!(
        "{:<12} {:>11} {:>14} {:>15}",
        "day", "connections", "consumption", "per connection"
    );
    for row in &total.rows {
        println!(
            "{:<12} {:>11} {:>10.1} kWh {:>11.2} kWh",
            day_of(&row.period_start),
            row.connections,
            kwh(row.consumption),
            kwh(row.consumption) / f64::from(row.connections.max(1)),
        );
    }
    let by_area = import_per_day(analyst, range, "postcode4").await?;
    if let Some(last) = by_area.rows.last().map(|r| r.period_start.clone()) {
        let rows: Vec<_> = by_area
            .rows
            .iter()
            .filter(|r| r.period_start == last)
            .collect();
        println!(
            "import on {} by area (a postcode4, a region of its smaller ones, or the rest): {} rows, the first 12",
            day_of(&last),
            rows.len()
        );
        println!(
            "{:<12} {:>11} {:>14} {:>15}",
            "area", "connections", "consumption", "per connection"
        );
        for row in rows.iter().take(12) {
            let area = row.group.get("area").cloned().unwrap_or_else(|| "-".into());
            println!(
                "{:<12} {:>11} {:>10.1} kWh {:>11.2} kWh",
                area,
                row.connections,
                kwh(row.consumption),
                kwh(row.consumption) / f64::from(row.connections.max(1)),
            );
        }
    }
    println!(
        "({} rows by area over {} frozen days; the curl below gives every row, by postcode4 and profile)",
        by_area.rows.len(),
        by_area.periods
    );
    if by_area.rows.is_empty() {
        println!(
            "no rows: fewer than {} connections with daily or interval consent count in a day; try more --meters",
            config.privacy.min_group_size
        );
    }
    Ok(())
}
