//! `kubectl sluice cron list` and `kubectl sluice cron trigger CRONFLOW`.

use jiff::Timestamp;
use kube::Api;
use kube::api::{ListParams, PostParams};
use sluice_api::{CronFlow, FlowRun, Trigger};

use super::print;
use crate::kubeconfig::Connection;
use crate::{Error, FIELD_MANAGER, Result};

/// Creates one run of the CronFlow now and prints its name.
pub async fn trigger(conn: &Connection, name: &str) -> Result<u8> {
    let cronflows: Api<CronFlow> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let cf = cronflows
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::CronFlowNotFound {
            name: name.to_owned(),
            namespace: conn.namespace.clone(),
        })?;
    let run = cf.flow_run(Trigger::Manual(Timestamp::now().as_second()));
    let runs: Api<FlowRun> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let created = runs.create(&params, &run).await?;
    print(&format!(
        "flowrun/{} created (a manual run of cronflow/{name})\n",
        created.metadata.name.unwrap_or_default()
    ))?;
    Ok(0)
}

/// Prints the namespace's CronFlows as a table.
pub async fn list(conn: &Connection) -> Result<u8> {
    let cronflows: Api<CronFlow> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let mut items = cronflows.list(&ListParams::default()).await?.items;
    items.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if items.is_empty() {
        eprintln!("No cronflows in namespace {}.", conn.namespace);
        return Ok(0);
    }
    print(&render_list(&items, Timestamp::now()))?;
    Ok(0)
}

/// The table of `cron list`: one row per CronFlow, times as ages (`12s ago`) or waits (`in 3m`).
pub fn render_list(items: &[CronFlow], now: Timestamp) -> String {
    let header = [
        "NAME",
        "SCHEDULE",
        "TIMEZONE",
        "SUSPEND",
        "ACTIVE",
        "LAST SCHEDULE",
        "NEXT SCHEDULE",
        "READY",
    ];
    let rows: Vec<[String; 8]> = items
        .iter()
        .map(|cf| {
            let status = cf.status.clone().unwrap_or_default();
            let ready = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map_or("-".to_owned(), |c| {
                    if c.status == "True" {
                        "True".to_owned()
                    } else {
                        format!("False ({})", c.reason)
                    }
                });
            [
                cf.metadata.name.clone().unwrap_or_default(),
                cf.spec.schedule.clone(),
                cf.spec.time_zone.clone().unwrap_or_else(|| "UTC".into()),
                cf.spec.suspend.to_string(),
                status.active.len().to_string(),
                status
                    .last_schedule_time
                    .map_or("-".into(), |t| relative(t.0, now)),
                status
                    .next_schedule_time
                    .map_or("-".into(), |t| relative(t.0, now)),
                ready,
            ]
        })
        .collect();
    super::table(&header, &rows)
}

/// `t` relative to `now`: `5s ago`, `in 2m`, `3h ago`, `4d ago`.
fn relative(t: Timestamp, now: Timestamp) -> String {
    let secs = now.duration_since(t).as_secs();
    let (n, future) = (secs.unsigned_abs(), secs < 0);
    let amount = match n {
        0..=119 => format!("{n}s"),
        120..=7199 => format!("{}m", n / 60),
        7200..=172_799 => format!("{}h", n / 3600),
        _ => format!("{}d", n / 86_400),
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_list_shows_schedule_zone_activity_and_times() {
        let now: Timestamp = "2026-07-01T12:00:00Z".parse().unwrap();
        let cfs: Vec<CronFlow> = serde_json::from_value(json!([
            {
                "apiVersion": "sluice.dev/v1alpha1", "kind": "CronFlow",
                "metadata": {"name": "nightly-report"},
                "spec": {"schedule": "0 3 * * *", "timeZone": "Europe/Berlin",
                         "flowRun": {"spec": {"steps": [{"name": "a", "sleep": "1s"}]}}},
                "status": {"active": ["nightly-report-1782867600"], "activeCount": 1,
                           "lastScheduleTime": "2026-07-01T11:59:30Z",
                           "nextScheduleTime": "2026-07-02T01:00:00Z",
                           "conditions": [{"type": "Ready", "status": "True", "reason": "Scheduling",
                                           "message": "", "lastTransitionTime": "2026-07-01T00:00:00Z"}]}
            },
            {
                "apiVersion": "sluice.dev/v1alpha1", "kind": "CronFlow",
                "metadata": {"name": "broken"},
                "spec": {"schedule": "0 3 * * *", "timeZone": "Mars/Base", "suspend": true,
                         "flowRun": {"spec": {"steps": [{"name": "a", "sleep": "1s"}]}}},
                "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSchedule",
                                           "message": "", "lastTransitionTime": "2026-07-01T00:00:00Z"}]}
            }
        ]))
        .unwrap();
        assert_eq!(
            render_list(&cfs, now),
            "NAME             SCHEDULE    TIMEZONE        SUSPEND   ACTIVE   LAST SCHEDULE   NEXT SCHEDULE   READY\n\
             nightly-report   0 3 * * *   Europe/Berlin   false     1        30s ago         in 13h          True\n\
             broken           0 3 * * *   Mars/Base       true      0        -               -               False (InvalidSchedule)\n"
        );
    }
}
