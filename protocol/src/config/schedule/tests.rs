//! Schedules: the table form, shared schedules, time zones, and patterns that wait for a
//! schedule the config does not render.

use super::{schedules, unscheduled_patterns};
use crate::config::Config;

fn config(tasks: &str) -> Result<Config, String> {
    let text = format!("[fleet]\nname = \"ops\"\nallowed_accounts = [\"111122223333\"]\n{tasks}");
    Config::parse(&text, None).map_err(|e| e.to_string())
}

fn task(name: &str, schedule_or_pattern: &str) -> String {
    format!(
        "\n[[tasks]]\nname = \"{name}\"\n{schedule_or_pattern}\ntargets = {{ type = \"ec2:volume\", tags = {{ Backup = \"x\" }} }}\naction = \"noop\"\n"
    )
}

#[test]
fn tasks_naming_one_schedule_share_it_and_match_its_events() {
    let shared = "schedule = { name = \"nightly\", expression = \"cron(0 2 * * ? *)\" }";
    let config =
        config(&(task("backup", shared) + &task("image", shared) + &task("weekly", "schedule = \"rate(7 days)\"")))
            .expect("valid");
    let rendered: Vec<&str> = schedules(&config).iter().map(|s| s.name.as_str()).collect();
    assert_eq!(rendered, ["ops.nightly", "ops.weekly"]);
    let nightly = schedules(&config)[0].event("111122223333", "eu-west-1");
    let matched: Vec<&str> =
        config.tasks.iter().filter(|t| t.pattern.matches(&nightly)).map(|t| t.name.as_str()).collect();
    assert_eq!(matched, ["backup", "image"]);
}

#[test]
fn a_schedule_with_a_time_zone_is_a_scheduler_schedule_and_matches_only_its_own_events() {
    let zoned = "schedule = { expression = \"cron(0 2 * * ? *)\", timezone = \"Europe/Paris\" }";
    let config = config(&(task("paris", zoned) + &task("utc", "schedule = \"cron(0 2 * * ? *)\""))).expect("valid");
    let [paris, utc] = [&config.tasks[0], &config.tasks[1]];
    let zone = paris.schedule.as_ref().expect("schedule");
    assert_eq!(zone.timezone.as_deref(), Some("Europe/Paris"));
    let event = zone.event("111122223333", "eu-west-1");
    assert_eq!(event["source"], "aws.scheduler");
    assert_eq!(event["resources"][0], "arn:aws:scheduler:eu-west-1:111122223333:schedule/default/ops.paris");
    assert!(paris.pattern.matches(&event));
    assert!(!utc.pattern.matches(&event));
    assert!(!paris.pattern.matches(&utc.schedule.as_ref().expect("schedule").event("111122223333", "eu-west-1")));
}

#[test]
fn a_shared_schedule_given_two_expressions_and_bad_zones_are_refused_with_their_place() {
    let err = config(
        &(task("a", "schedule = { name = \"n\", expression = \"rate(1 day)\" }")
            + &task("b", "schedule = { name = \"n\", expression = \"rate(2 days)\" }")),
    )
    .expect_err("two expressions");
    assert!(err.contains("tasks[1] \"b\".schedule: schedule `ops.n` is also task \"a\"'s"), "{err}");
    for (zone, valid) in [
        ("Europe/Paris", true),
        ("UTC", true),
        ("America/Argentina/Buenos_Aires", true),
        ("paris", false),
        ("CET ", false),
    ] {
        let result =
            config(&task("t", &format!("schedule = {{ expression = \"rate(1 day)\", timezone = \"{zone}\" }}")));
        assert_eq!(result.is_ok(), valid, "{zone}: {result:?}");
        if !valid {
            assert!(result.expect_err("invalid").contains("tasks[0] \"t\".schedule: `"), "{zone}");
        }
    }
    let err =
        config(&task("t", "schedule = { expression = \"rate(1 day)\", zone = \"UTC\" }")).expect_err("unknown key");
    assert!(err.contains("line"), "{err}");
}

#[test]
fn a_pattern_waiting_for_a_schedule_the_config_does_not_render_is_named() {
    let waiting = "pattern = { source = [\"aws.events\"], \"detail-type\" = [\"Scheduled Event\"], resources = [{ suffix = \"rule/ops.nightly\" }] }";
    let alone = config(&task("backup", waiting)).expect("loads: the check is the deploy's");
    let problems = unscheduled_patterns(&alone);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let line = problems[0].to_string();
    assert!(
        line.contains("tasks[0] \"backup\".pattern: waits for a `Scheduled Event`") && line.contains("renders: none"),
        "{line}"
    );

    // The schedule named `nightly` renders `ops-nightly`, whose events the pattern matches.
    let with_schedule = config(
        &(task("backup", waiting) + &task("image", "schedule = { name = \"nightly\", expression = \"rate(1 day)\" }")),
    )
    .expect("valid");
    assert!(unscheduled_patterns(&with_schedule).is_empty());

    // Another schedule does not satisfy it, and an event pattern is not a schedule's business.
    let other = config(
        &(task("backup", waiting)
            + &task("weekly", "schedule = \"rate(7 days)\"")
            + &task("on-stop", "pattern = { source = [\"aws.ec2\"] }")),
    )
    .expect("valid");
    let problems = unscheduled_patterns(&other);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].to_string().contains("renders: ops.weekly"), "{}", problems[0]);
}
