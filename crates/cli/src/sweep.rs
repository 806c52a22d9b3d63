//! `confide dp sweep`: trains one job at several ε with `confide train`'s code, several seeds
//! each, and writes the accuracy–ε curve as JSON and as an SVG plot (drawn here: a line chart
//! needs no plotting library).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::train::{TrainArgs, train};

/// Arguments of `confide dp sweep`.
#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    /// Job file with a `[privacy]` section (see `confide train`).
    #[arg(long)]
    pub config: PathBuf,
    /// Comma-separated target ε values.
    #[arg(long, value_delimiter = ',', default_value = "0.5,1,2,4,8")]
    pub epsilons: Vec<f64>,
    /// Seeds (model initialisation) per ε; the noise always comes from the OS.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Output SVG file.
    #[arg(long)]
    pub out: PathBuf,
    /// Also train with the same hyper-parameters and clipping but no noise (σ = 0, not
    /// private) as a reference line.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub baseline: bool,
    /// Directory for the individual runs (default: a temporary directory).
    #[arg(long)]
    pub runs: Option<PathBuf>,
}

/// One ε of the sweep.
#[derive(Debug, Clone, Serialize)]
struct Point {
    target_epsilon: f64,
    epsilon: f64,
    noise_multiplier: f64,
    accuracies: Vec<f64>,
    mean: f64,
    min: f64,
    max: f64,
}

/// Runs the sweep and writes `<out>` and `<out>.json`.
pub fn run(args: &SweepArgs) -> Result<i32> {
    if args.epsilons.is_empty() || args.epsilons.iter().any(|e| e.is_nan() || *e <= 0.0) {
        bail!("--epsilons must list positive values");
    }
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let tmp = tempfile::tempdir()?;
    let runs = args
        .runs
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let base = TrainArgs {
        config: args.config.clone(),
        data: None,
        seed: None,
        target_epsilon: None,
        out: None,
        report: None,
        ledger: None,
        dataset: None,
        insecure_noise_seed: None,
        quiet: true,
        without_noise: false,
    };
    let mut points = Vec::new();
    let mut job_id = String::new();
    for (i, &eps) in args.epsilons.iter().enumerate() {
        let mut accs = Vec::new();
        let mut last = None;
        for seed in 1..=args.seeds {
            let report = train(&TrainArgs {
                seed: Some(seed),
                target_epsilon: Some(eps),
                out: Some(runs.join(format!("eps{i}-seed{seed}"))),
                ..base.clone()
            })?;
            let acc = report
                .test_accuracy
                .context("the job needs an [evaluation] test set for a sweep")?;
            eprintln!(
                "ε target {eps}: seed {seed} accuracy {acc:.4} (ε {:.3}, σ {:.3})",
                report.epsilon.unwrap_or(f64::NAN),
                report.noise_multiplier.unwrap_or(f64::NAN)
            );
            accs.push(acc);
            job_id.clone_from(&report.job_id);
            last = Some(report);
        }
        let Some(last) = last else { continue };
        points.push(point(eps, &last, accs));
    }
    let baseline = if args.baseline {
        let mut accs = Vec::new();
        for seed in 1..=args.seeds {
            let r = train(&TrainArgs {
                seed: Some(seed),
                out: Some(runs.join(format!("no-noise-seed{seed}"))),
                without_noise: true,
                ..base.clone()
            })?;
            accs.push(r.test_accuracy.unwrap_or(f64::NAN));
        }
        Some(accs.iter().sum::<f64>() / accs.len() as f64)
    } else {
        None
    };
    let svg = plot(&job_id, &points, baseline);
    std::fs::write(&args.out, svg)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let json_path = args.out.with_extension("json");
    let json = serde_json::json!({
        "job_id": job_id,
        "config": args.config,
        "seeds": args.seeds,
        "points": points,
        "no_noise_mean_accuracy": baseline,
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    outln!("{}", serde_json::to_string_pretty(&json)?);
    eprintln!("wrote {} and {}", args.out.display(), json_path.display());
    Ok(0)
}

fn point(target: f64, report: &crate::train::TrainReport, accs: Vec<f64>) -> Point {
    let mean = accs.iter().sum::<f64>() / accs.len() as f64;
    let min = accs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = accs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Point {
        target_epsilon: target,
        epsilon: report.epsilon.unwrap_or(f64::NAN),
        noise_multiplier: report.noise_multiplier.unwrap_or(f64::NAN),
        accuracies: accs,
        mean,
        min,
        max,
    }
}

/// An SVG line chart of mean accuracy against ε (log scale), with min–max bars per point and
/// the non-private mean as a dashed line.
fn plot(title: &str, points: &[Point], baseline: Option<f64>) -> String {
    let (w, h) = (640.0, 420.0);
    let (left, right, top, bottom) = (70.0, 20.0, 40.0, 60.0);
    let eps: Vec<f64> = points.iter().map(|p| p.epsilon.max(1e-6)).collect();
    let lo_x = eps
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .log10()
        .floor();
    let hi_x = eps
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .log10()
        .ceil()
        .max(lo_x + 1.0);
    let mut lo_y = points.iter().map(|p| p.min).fold(1.0, f64::min);
    if let Some(b) = baseline {
        lo_y = lo_y.min(b);
    }
    let lo_y = ((lo_y - 0.02) * 20.0).floor() / 20.0;
    let lo_y = lo_y.clamp(0.0, 0.95);
    let hi_y = 1.0;
    let x = |e: f64| left + (e.max(1e-6).log10() - lo_x) / (hi_x - lo_x) * (w - left - right);
    let y = |a: f64| top + (hi_y - a) / (hi_y - lo_y) * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}: test accuracy against ε (DP-SGD)</text>"#,
        w / 2.0,
        escape(title)
    );
    // Axes and grid.
    let (x0, x1, y0, y1) = (left, w - right, h - bottom, top);
    let _ = writeln!(
        s,
        r#"<path d="M{x0},{y1} V{y0} H{x1}" stroke="black" fill="none"/>"#
    );
    let mut decade = lo_x;
    while decade <= hi_x + 1e-9 {
        for m in [1.0, 2.0, 5.0] {
            let e = m * 10f64.powf(decade);
            if e.log10() > hi_x + 1e-9 {
                break;
            }
            let px = x(e);
            let _ = writeln!(
                s,
                r##"<line x1="{px}" y1="{y0}" x2="{px}" y2="{y1}" stroke="#ddd"/><text x="{px}" y="{}" text-anchor="middle">{}</text>"##,
                y0 + 16.0,
                trim(e)
            );
        }
        decade += 1.0;
    }
    let mut a = lo_y;
    while a <= hi_y + 1e-9 {
        let py = y(a);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{py}" x2="{x1}" y2="{py}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{a:.2}</text>"##,
            x0 - 6.0,
            py + 4.0
        );
        a += 0.05;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">ε (δ fixed; log scale)</text>"#,
        (x0 + x1) / 2.0,
        h - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">test accuracy</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0
    );
    if let Some(b) = baseline {
        let py = y(b);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{py}" x2="{x1}" y2="{py}" stroke="#888" stroke-dasharray="6 4"/><text x="{}" y="{}" text-anchor="end" fill="#555">no noise (σ = 0): {b:.3}</text>"##,
            x1 - 4.0,
            py - 6.0
        );
    }
    let path: Vec<String> = points
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.epsilon), y(p.mean)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##,
        path.join(" ")
    );
    for p in points {
        let px = x(p.epsilon);
        let _ = writeln!(
            s,
            r##"<line x1="{px}" y1="{}" x2="{px}" y2="{}" stroke="#1f77b4"/><circle cx="{px}" cy="{}" r="4" fill="#1f77b4"/><text x="{}" y="{}" font-size="11">{:.3}</text>"##,
            y(p.min),
            y(p.max),
            y(p.mean),
            px + 6.0,
            y(p.mean) - 6.0,
            p.mean
        );
    }
    s.push_str("</svg>\n");
    s
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_places_points_and_baseline() {
        let pts = vec![
            Point {
                target_epsilon: 1.0,
                epsilon: 1.0,
                noise_multiplier: 2.0,
                accuracies: vec![0.8, 0.9],
                mean: 0.85,
                min: 0.8,
                max: 0.9,
            },
            Point {
                target_epsilon: 8.0,
                epsilon: 7.9,
                noise_multiplier: 0.9,
                accuracies: vec![0.95],
                mean: 0.95,
                min: 0.95,
                max: 0.95,
            },
        ];
        let svg = plot("digits <mlp>", &pts, Some(0.97));
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("digits &lt;mlp&gt;"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains("no noise (σ = 0): 0.970"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
