//! k6-style pass/fail thresholds over a run's report: `--fail-if 'p99<50ms,lost==0'` lists the
//! conditions the run must meet; any breach makes the tool exit non-zero. Pure logic.

use crate::Report;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

/// One condition, e.g. `p99<50ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    metric: String,
    op: Op,
    value: f64,
    text: String,
}

/// Metrics a threshold may name: latency quantiles in milliseconds, counts as numbers.
pub const METRICS: &[&str] = &[
    "p50",
    "p90",
    "p99",
    "p999",
    "max",
    "lost",
    "unacked",
    "undeliverable",
    "duplicated",
    "out_of_order",
    "errors",
    "reconnects",
    "connect_failures",
];

impl Threshold {
    fn value_of(&self, r: &Report) -> f64 {
        match self.metric.as_str() {
            "p50" => r.latency_ms_p50,
            "p90" => r.latency_ms_p90,
            "p99" => r.latency_ms_p99,
            "p999" => r.latency_ms_p999,
            "max" => r.latency_ms_max,
            "lost" => r.lost as f64,
            "unacked" => r.unacked as f64,
            "undeliverable" => r.undeliverable as f64,
            "duplicated" => r.duplicated as f64,
            "out_of_order" => r.out_of_order as f64,
            "errors" => r.errors as f64,
            "reconnects" => r.reconnects as f64,
            _ => r.connect_failures as f64,
        }
    }

    /// Whether `r` meets the condition.
    pub fn holds(&self, r: &Report) -> bool {
        let v = self.value_of(r);
        match self.op {
            Op::Lt => v < self.value,
            Op::Le => v <= self.value,
            Op::Eq => v == self.value,
            Op::Ge => v >= self.value,
            Op::Gt => v > self.value,
        }
    }

    /// `p99<50ms (was 73.2)`, for the breach message.
    pub fn describe(&self, r: &Report) -> String {
        format!("{} (was {})", self.text, self.value_of(r))
    }
}

/// Parses `cond[,cond…]` where cond is `metric op value[ms|s]`, op one of `< <= == >= >`.
pub fn parse(spec: &str) -> Result<Vec<Threshold>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(parse_one)
        .collect()
}

fn parse_one(cond: &str) -> Result<Threshold, String> {
    let ops = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("==", Op::Eq),
        ("<", Op::Lt),
        (">", Op::Gt),
    ];
    let (pos, len, op) = ops
        .iter()
        .filter_map(|(s, op)| cond.find(s).map(|p| (p, s.len(), *op)))
        .min_by_key(|(p, len, _)| (*p, usize::MAX - len))
        .ok_or_else(|| format!("{cond:?}: no comparison (use < <= == >= >)"))?;
    let metric = cond[..pos].trim().to_ascii_lowercase();
    if !METRICS.contains(&metric.as_str()) {
        return Err(format!(
            "{cond:?}: unknown metric {metric:?} (one of {})",
            METRICS.join(", ")
        ));
    }
    let raw = cond[pos + len..].trim();
    let (num, scale) = if let Some(n) = raw.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = raw.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (raw, 1.0)
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{cond:?}: {raw:?} is not a number"))?;
    Ok(Threshold {
        metric,
        op,
        value: value * scale,
        text: cond.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(p99: f64, lost: usize) -> Report {
        Report {
            lost,
            latency_ms_p99: p99,
            latency_ms_max: p99,
            ..Default::default()
        }
    }

    #[test]
    fn parses_and_evaluates() {
        let t = parse("p99<50ms, lost==0,max<=1s").unwrap();
        assert_eq!(t.len(), 3);
        assert!(t.iter().all(|t| t.holds(&report(49.0, 0))));
        assert!(!t[0].holds(&report(50.0, 0)));
        assert!(!t[1].holds(&report(1.0, 1)));
        assert!(t[2].holds(&report(1000.0, 0)) && !t[2].holds(&report(1000.5, 0)));
        assert_eq!(t[1].describe(&report(1.0, 3)), "lost==0 (was 3)");
    }

    #[test]
    fn refuses_bad_conditions_with_reasons() {
        for (bad, why) in [
            ("p98<1", "unknown metric"),
            ("p99 50", "no comparison"),
            ("lost==x", "not a number"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
