//! Pushes a run's results to a Prometheus Pushgateway (text exposition format, `PUT` to
//! `/metrics/job/loadtest/scenario/{scenario}`, which replaces the group's previous values).

/// Pushes `samples` (metric name with optional labels, value) for `scenario` to `url`.
pub async fn push(url: &str, scenario: &str, samples: &[(String, f64)]) -> anyhow::Result<()> {
    let body = exposition(samples);
    let target = format!(
        "{}/metrics/job/loadtest/scenario/{scenario}",
        url.trim_end_matches('/')
    );
    let response = reqwest::Client::new()
        .put(&target)
        .header("content-type", "text/plain; version=0.0.4")
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "the Pushgateway at {target} answered {}",
        response.status()
    );
    println!("results pushed to {target}");
    Ok(())
}

/// The text exposition of `samples`, one `# TYPE` line per metric family.
pub fn exposition(samples: &[(String, f64)]) -> String {
    let mut text = String::new();
    let mut typed = std::collections::BTreeSet::new();
    for (name, value) in samples {
        let family = name.split('{').next().unwrap_or(name);
        if typed.insert(family.to_owned()) {
            text.push_str(&format!("# TYPE {family} gauge\n"));
        }
        text.push_str(&format!("{name} {value}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_is_typed_once_and_labels_are_kept() {
        let text = exposition(&[
            ("loadtest_lost_total".into(), 0.0),
            ("loadtest_delivery_latency_ms{quantile=\"0.5\"}".into(), 1.5),
            (
                "loadtest_delivery_latency_ms{quantile=\"0.99\"}".into(),
                9.0,
            ),
        ]);
        assert_eq!(
            text,
            "# TYPE loadtest_lost_total gauge\nloadtest_lost_total 0\n\
             # TYPE loadtest_delivery_latency_ms gauge\n\
             loadtest_delivery_latency_ms{quantile=\"0.5\"} 1.5\n\
             loadtest_delivery_latency_ms{quantile=\"0.99\"} 9\n"
        );
    }
}
