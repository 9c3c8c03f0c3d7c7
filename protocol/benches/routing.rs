//! What routing costs over merely parsing the JSON: the same event bodies (the fixtures) run
//! through `plain_parse` (`serde_json::from_str` into a `Value`) and through `route` (normalize,
//! plan against 100 tasks, serialize every job), with throughput in events per second.

use criterion::{black_box, Criterion, Throughput};

use opsfleet_protocol::event::normalize;
use opsfleet_protocol::{Config, Planner};
use std::fmt::Write as _;

/// The valid fixtures: raw EventBridge events, SNS-wrapped ones, classic alarms.
const BODIES: &[&str] = &[
    include_str!("../fixtures/ec2-instance-state-change.json"),
    include_str!("../fixtures/ebs-snapshot-notification.json"),
    include_str!("../fixtures/ebs-volume-notification.json"),
    include_str!("../fixtures/cloudwatch-alarm-state-change.json"),
    include_str!("../fixtures/cloudwatch-alarm-metric-math.json"),
    include_str!("../fixtures/cloudwatch-composite-alarm.json"),
    include_str!("../fixtures/sns-classic-alarm.json"),
    include_str!("../fixtures/sns-classic-alarm-metric-math.json"),
    include_str!("../fixtures/sns-eventbridge-event.json"),
    include_str!("../fixtures/tag-change-on-resource.json"),
    include_str!("../fixtures/scheduled-event.json"),
];

const TASKS: usize = 100;

/// The pattern of task `i`, as the console's JSON. Ten kinds of pattern take turns; only the
/// first task of each kind can match a fixture, so each event matches a few tasks and is
/// checked against all of them.
fn pattern(i: usize) -> String {
    let hit = i < 10;
    match i % 10 {
        0 => format!(
            r#"{{"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"], "detail": {{"state": ["{}"]}}}}"#,
            if hit { "stopped" } else { "shutting-down" }
        ),
        1 => format!(
            r#"{{"detail-type": [{{"prefix": "{}"}}], "detail": {{"result": ["succeeded", "available"]}}}}"#,
            if hit { "EBS " } else { "EBS Fast Snapshot" }
        ),
        2 => format!(
            r#"{{"source": ["aws.ec2"], "account": [{{"anything-but": ["{}"]}}], "detail": {{"state": [{{"anything-but": ["pending", "running"]}}]}}}}"#,
            if hit { "210987654321" } else { "123456789012" }
        ),
        3 => format!(
            r#"{{"detail-type": ["Tag Change on Resource"], "detail": {{"version": [{{"numeric": [">", {}, "<=", 100000]}}]}}}}"#,
            if hit { 0 } else { 100 + i }
        ),
        4 => {
            let name = if hit { String::new() } else { format!("team-{i}-") };
            format!(
                r#"{{"source": ["aws.cloudwatch"], "$or": [{{"detail": {{"alarmName": [{{"prefix": "{name}web-"}}]}}}}, {{"detail": {{"alarmName": [{{"prefix": "{name}db-"}}], "state": {{"value": ["ALARM"]}}}}}}]}}"#
            )
        }
        5 => format!(
            r#"{{"source": ["aws.events"], "resources": [{{"wildcard": "arn:aws:events:*:*:rule/{}"}}]}}"#,
            if hit { "night*".to_owned() } else { format!("job-{i}-*") }
        ),
        6 => format!(
            r#"{{"detail": {{"configuration": {{"metrics": {{"metricStat": {{"metric": {{"dimensions": {{"{}": [{{"exists": true}}]}}}}}}}}}}}}}}"#,
            if hit { "VolumeId" } else { "DBInstanceIdentifier" }
        ),
        7 => format!(
            r#"{{"detail-type": [{{"equals-ignore-case": "{}"}}], "detail": {{"state": {{"value": ["ALARM"]}}}}}}"#,
            if hit { "cloudwatch alarm state change".to_owned() } else { format!("custom alarm {i}") }
        ),
        8 => format!(
            r#"{{"source": ["aws.ec2"], "region": [{{"suffix": "{}"}}], "detail-type": ["EC2 Instance State-change Notification"]}}"#,
            if hit { "-2".to_owned() } else { format!("-{i}") }
        ),
        _ => format!(
            r#"{{"source": ["aws.tag"], "detail": {{"changed-tag-keys": ["{}"], "service": ["ec2"]}}}}"#,
            if hit { "Backup".to_owned() } else { format!("CostCenter{i}") }
        ),
    }
}

/// A fleet of [`TASKS`] tasks of the `noop` action; the scheduled-event tasks use discovery.
fn config() -> Config {
    config_of(TASKS)
}

/// A fleet of `tasks` tasks, the ten kinds of pattern taking turns.
fn config_of(tasks: usize) -> Config {
    let mut text = String::from("[fleet]\nname = \"bench\"\npartitions = 16\nallowed_accounts = [\"123456789012\"]\n");
    for i in 0..tasks {
        let targets = if i % 10 == 5 {
            r#"{ type = "ec2:volume", tags = { Backup = "nightly" }, regions = ["us-east-1"] }"#
        } else {
            r#""event""#
        };
        let _ = write!(
            text,
            "\n[[tasks]]\nname = \"task-{i:03}\"\npattern = '''{}'''\ntargets = {targets}\naction = \"noop\"\nparams = {{ sleep_ms = {i} }}\n",
            pattern(i)
        );
    }
    match Config::parse(&text, None) {
        Ok(config) => config,
        Err(e) => panic!("the benchmark config is invalid: {e}"),
    }
}

/// Routes every body once; returns the jobs made and the bytes of their JSON.
fn route(planner: &Planner, bodies: &[&str]) -> (usize, usize) {
    let (mut jobs, mut bytes) = (0, 0);
    for body in bodies {
        let event = match normalize(body) {
            Ok(event) => event,
            Err(e) => panic!("a fixture does not normalize: {e}"),
        };
        let plan = match planner.plan(&event, 1_715_800_000_000) {
            Ok(plan) => plan,
            Err(e) => panic!("event {} does not plan: {e}", event.id),
        };
        for job in &plan.jobs {
            match job.to_json() {
                Ok(json) => bytes += black_box(json).len(),
                Err(e) => panic!("job {} does not serialize: {e}", job.id),
            }
        }
        jobs += plan.jobs.len() + black_box(plan.discoveries).len();
    }
    (jobs, bytes)
}

fn routing(c: &mut Criterion) {
    let planner = Planner::new(config());
    let bodies = black_box(BODIES);
    let (jobs, bytes) = route(&planner, bodies);
    let matched: usize = bodies
        .iter()
        .filter_map(|b| normalize(b).ok())
        .filter_map(|e| planner.plan(&e, 0).ok())
        .map(|p| p.matched.len())
        .sum();
    println!(
        "routing {} bodies against {TASKS} tasks: {matched} task matches, {jobs} jobs and discoveries, {bytes} bytes of job JSON per pass",
        bodies.len()
    );

    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(bodies.len() as u64));
    group.bench_function("plain_parse", |b| {
        b.iter(|| {
            for body in bodies {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(body) {
                    black_box(value);
                }
            }
        })
    });
    group.bench_function("route", |b| b.iter(|| route(&planner, bodies)));
    // Where the route's time goes: normalizing alone, planning alone (matching and expanding
    // normalized events), serializing the planned jobs alone.
    group.bench_function("normalize", |b| {
        b.iter(|| bodies.iter().filter_map(|body| normalize(body).ok()).map(|e| black_box(e).id.len()).sum::<usize>())
    });
    let events: Vec<_> = bodies.iter().filter_map(|body| normalize(body).ok()).collect();
    group.bench_function("plan", |b| {
        b.iter(|| {
            events.iter().filter_map(|e| planner.plan(e, 1_715_800_000_000).ok()).map(|p| p.jobs.len()).sum::<usize>()
        })
    });
    let jobs: Vec<_> =
        events.iter().filter_map(|e| planner.plan(e, 1_715_800_000_000).ok()).flat_map(|p| p.jobs).collect();
    group.bench_function("serialize", |b| {
        b.iter(|| jobs.iter().filter_map(|j| j.to_json().ok()).map(|t| black_box(t).len()).sum::<usize>())
    });
    // Whether a faster parser pays: sonic-rs into the same `serde_json::Value` the matcher
    // reads, and into its own `Value` (the ceiling, were the matcher to read that instead).
    group.bench_function("sonic_rs_into_serde_value", |b| {
        b.iter(|| {
            for body in bodies {
                if let Ok(value) = sonic_rs::from_str::<serde_json::Value>(body) {
                    black_box(value);
                }
            }
        })
    });
    group.bench_function("sonic_rs_value", |b| {
        b.iter(|| {
            for body in bodies {
                if let Ok(value) = sonic_rs::from_str::<sonic_rs::Value>(body) {
                    black_box(value);
                }
            }
        })
    });
    group.finish();
}

/// A realistic mix: the 11 fixtures among 99 events no task matches (S3 object notifications,
/// instances starting), as a fleet's event bus mostly carries.
fn mix() -> Vec<String> {
    let mut bodies: Vec<String> = BODIES.iter().map(|b| (*b).to_owned()).collect();
    for i in 0..99 {
        let body = if i % 2 == 0 {
            serde_json::json!({
                "version": "0", "id": format!("00000000-0000-4000-8000-{i:012}"), "detail-type": "Object Created",
                "source": "aws.s3", "account": "123456789012", "time": "2024-05-15T17:04:40Z", "region": "us-east-1",
                "resources": [format!("arn:aws:s3:::bucket-{i}")],
                "detail": { "version": "0", "bucket": { "name": format!("bucket-{i}") },
                    "object": { "key": format!("logs/{i}/part-0000.json.gz"), "size": 52_428 + i, "etag": "d41d8cd98f00b204e9800998ecf8427e" },
                    "request-id": "57H08PA84AB1JZW0", "requester": "123456789012", "reason": "PutObject" }
            })
        } else {
            serde_json::json!({
                "version": "0", "id": format!("00000000-0000-4000-8000-{i:012}"), "detail-type": "EC2 Instance State-change Notification",
                "source": "aws.ec2", "account": "123456789012", "time": "2024-05-15T17:04:40Z", "region": "us-east-1",
                "resources": [format!("arn:aws:ec2:us-east-1:123456789012:instance/i-{i:017x}")],
                "detail": { "instance-id": format!("i-{i:017x}"), "state": "running" }
            })
        };
        bodies.push(body.to_string());
    }
    bodies
}

fn routing_mix(c: &mut Criterion) {
    let planner = Planner::new(config());
    let bodies = mix();
    let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
    let (jobs, _) = route(&planner, &bodies);
    println!("routing a mix of {} bodies: {jobs} jobs and discoveries per pass", bodies.len());
    let mut group = c.benchmark_group("routing_mix");
    group.throughput(Throughput::Elements(bodies.len() as u64));
    group.bench_function("plain_parse", |b| {
        b.iter(|| {
            for body in &bodies {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(body) {
                    black_box(value);
                }
            }
        })
    });
    group.bench_function("route", |b| b.iter(|| route(&planner, &bodies)));
    group.finish();
}

/// Matching alone, on normalized events: every pattern one by one (the reference) against the
/// compiled set, at 100 and 1,000 tasks.
fn matching(c: &mut Criterion) {
    let events: Vec<_> = BODIES.iter().filter_map(|b| normalize(b).ok()).collect();
    let mut group = c.benchmark_group("matching");
    group.throughput(Throughput::Elements(events.len() as u64));
    for tasks in [TASKS, 10 * TASKS] {
        let config = config_of(tasks);
        let patterns: Vec<opsfleet_protocol::Pattern> = config.tasks.iter().map(|t| t.pattern.clone()).collect();
        let set = opsfleet_protocol::PatternSet::new(&patterns);
        let one_by_one = |event: &opsfleet_protocol::event::Event| {
            patterns.iter().enumerate().filter(|(_, p)| p.matches(&event.document)).map(|(i, _)| i).collect::<Vec<_>>()
        };
        for event in &events {
            assert_eq!(set.matching(&event.document), one_by_one(event), "the set and the patterns agree");
        }
        println!("matching against {tasks} tasks: {} distinct patterns have no anchor", set.unanchored());
        group.bench_function(format!("one_by_one/{tasks}"), |b| {
            b.iter(|| events.iter().map(|e| one_by_one(e).len()).sum::<usize>())
        });
        group.bench_function(format!("compiled/{tasks}"), |b| {
            b.iter(|| events.iter().map(|e| set.matching(&e.document).len()).sum::<usize>())
        });
    }
    group.finish();
}

// `criterion_main!` would also do, but its `criterion_group!` makes an undocumented `pub fn`.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    routing(&mut criterion);
    routing_mix(&mut criterion);
    matching(&mut criterion);
    criterion.final_summary();
}
