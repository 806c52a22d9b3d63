//! `confide data partition`: splits one dataset among simulated owners with a seeded
//! partitioner (`confide_ml::partition`), prints each owner's size and label counts as JSON,
//! and draws the label distribution per owner as an SVG.

use std::path::{Path, PathBuf};

use confide_core::PartySection;

use anyhow::{Context, Result, bail};
use confide_ml::dataset::{Column, CsvSpec, load_csv, read_column};
use confide_ml::partition::{Partitioner, partition};
use serde_json::{Value, json};

/// `confide data partition`.
#[derive(clap::Args, Debug)]
pub struct PartitionArgs {
    /// The dataset (CSV).
    #[arg(long)]
    pub data: PathBuf,
    /// The label column: a header name, or a 0-based index (with --no-header).
    #[arg(long)]
    pub label: String,
    /// The file has no header row (columns are then named by index).
    #[arg(long)]
    pub no_header: bool,
    /// Number of classes (labels must be integers in 0..classes).
    #[arg(long)]
    pub classes: usize,
    /// Columns that are neither features, label nor group (by name, or index with --no-header).
    #[arg(long)]
    pub exclude: Vec<String>,
    /// natural (one owner per --group value), iid, dirichlet:ALPHA, shards:PER_OWNER or
    /// quantity:BETA.
    #[arg(long)]
    pub partitioner: String,
    /// Owners to split among (the natural split has one per group instead).
    #[arg(long, default_value_t = 10)]
    pub owners: usize,
    /// The group column (writer, hospital, role) for the natural split.
    #[arg(long)]
    pub group: Option<String>,
    /// Seed of the split.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the label distribution per owner to this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Parses `--partitioner`.
pub fn parse_partitioner(text: &str) -> Result<Partitioner> {
    let (kind, arg) = text.split_once(':').unwrap_or((text, ""));
    let number = |what: &str| -> Result<f64> {
        arg.parse::<f64>()
            .with_context(|| format!("--partitioner {kind}:{what} needs a number after the colon"))
    };
    Ok(match kind {
        "natural" if arg.is_empty() => Partitioner::Natural,
        "iid" if arg.is_empty() => Partitioner::Iid,
        "dirichlet" => Partitioner::Dirichlet {
            alpha: number("ALPHA")?,
        },
        "quantity" => Partitioner::Quantity {
            beta: number("BETA")?,
        },
        "shards" => Partitioner::Shards {
            per_owner: arg
                .parse()
                .context("--partitioner shards:PER_OWNER needs a whole number")?,
        },
        _ => bail!(
            "unknown partitioner `{text}`: natural, iid, dirichlet:ALPHA, shards:PER_OWNER or quantity:BETA"
        ),
    })
}

fn column(text: &str, no_header: bool) -> Result<Column> {
    if no_header {
        Ok(Column::Index(text.parse().with_context(|| {
            format!("`{text}`: without a header, columns are 0-based indices")
        })?))
    } else {
        Ok(Column::Name(text.to_string()))
    }
}

/// Runs `confide data partition`.
pub fn run(args: &PartitionArgs) -> Result<Value> {
    let how = parse_partitioner(&args.partitioner)?;
    if how == Partitioner::Natural && args.group.is_none() {
        bail!("the natural split needs --group COLUMN");
    }
    let group = args
        .group
        .as_deref()
        .map(|g| column(g, args.no_header))
        .transpose()?;
    let mut exclude: Vec<Column> = args
        .exclude
        .iter()
        .map(|c| column(c, args.no_header))
        .collect::<Result<_>>()?;
    exclude.extend(group.clone());
    let spec = CsvSpec {
        has_header: !args.no_header,
        label: column(&args.label, args.no_header)?,
        exclude,
    };
    let data = load_csv(&args.data, &spec, args.classes)?;
    let groups = match &group {
        Some(g) => {
            let shown = args.data.display().to_string();
            let file = std::fs::File::open(&args.data).with_context(|| shown.clone())?;
            Some(read_column(file, &shown, !args.no_header, g)?)
        }
        None => None,
    };
    let parts = partition(
        &data.labels,
        groups.as_deref(),
        args.owners,
        &how,
        args.seed,
    )?;
    let counts: Vec<Vec<usize>> = parts
        .iter()
        .map(|p| {
            let mut c = vec![0; args.classes];
            for &i in p {
                c[data.labels[i] as usize] += 1;
            }
            c
        })
        .collect();
    let names: Option<Vec<String>> = groups.map(|g| {
        let mut names: Vec<String> = g;
        names.sort();
        names.dedup();
        names
    });
    if let Some(path) = &args.plot {
        let title = format!(
            "{} — {} owners, {}, seed {}",
            args.data
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            parts.len(),
            args.partitioner,
            args.seed
        );
        std::fs::write(path, plot(&title, &counts))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(json!({
        "records": data.len(),
        "owners": parts.len(),
        "partitioner": args.partitioner,
        "seed": args.seed,
        "groups": names,
        "sizes": parts.iter().map(Vec::len).collect::<Vec<_>>(),
        "label_counts": counts,
        "plot": args.plot.as_ref().map(|p| p.display().to_string()),
    }))
}

/// Ten distinguishable colours (Okabe–Ito's eight and two greys), cycled past ten classes.
const PALETTE: [&str; 10] = [
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000",
    "#999999", "#666666",
];

/// A stacked bar per owner: its records by class.
fn plot(title: &str, counts: &[Vec<usize>]) -> String {
    let (left, top, plot_h) = (60.0, 40.0, 260.0);
    let bar = (900.0 / counts.len().max(1) as f64).clamp(1.0, 40.0);
    let width = left + bar * counts.len() as f64 + 140.0;
    let height = top + plot_h + 50.0;
    let max = counts
        .iter()
        .map(|c| c.iter().sum::<usize>())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let esc = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="22" font-size="14">{}</text>
<text x="14" y="{:.0}" transform="rotate(-90 14 {:.0})">records</text>
<text x="{left}" y="{:.0}">owners (one bar each), coloured by label</text>
<line x1="{left}" y1="{top}" x2="{left}" y2="{:.0}" stroke="black"/>
<text x="{:.0}" y="{:.0}" text-anchor="end">{max:.0}</text>
<text x="{:.0}" y="{:.0}" text-anchor="end">0</text>
"#,
        esc(title),
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        top + plot_h + 30.0,
        top + plot_h,
        left - 4.0,
        top + 10.0,
        left - 4.0,
        top + plot_h,
    );
    for (o, c) in counts.iter().enumerate() {
        let x = left + bar * o as f64;
        let mut y = top + plot_h;
        for (class, &n) in c.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let h = plot_h * n as f64 / max;
            y -= h;
            s.push_str(&format!(
                r#"<rect class="owner-{o}" x="{x:.2}" y="{y:.2}" width="{:.2}" height="{h:.2}" fill="{}"><title>owner {o}, label {class}: {n}</title></rect>
"#,
                (bar * 0.9).max(0.5),
                PALETTE[class % PALETTE.len()]
            ));
        }
    }
    let legend_x = left + bar * counts.len() as f64 + 20.0;
    let classes = counts.first().map_or(0, Vec::len).min(20);
    for class in 0..classes {
        let y = top + 16.0 * class as f64;
        s.push_str(&format!(
            r#"<rect x="{legend_x:.0}" y="{y:.0}" width="10" height="10" fill="{}"/><text x="{:.0}" y="{:.0}">label {class}</text>
"#,
            PALETTE[class % PALETTE.len()],
            legend_x + 14.0,
            y + 9.0
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// `[simulate.partition]`: splits the job's dataset among owners `owner-001`, … and writes each
/// owner's rows (the source's fields, header first, rewritten as CSV) to `dir/owner-NNN.csv`.
/// Returns the parties and a JSON summary (sizes, label counts, and for the natural split each
/// owner's group value). An owner left without records is refused.
pub fn expand(config: &confide_core::JobConfig, dir: &Path) -> Result<(Vec<PartySection>, Value)> {
    let Some(part) = &config.simulate.partition else {
        bail!("the job has no [simulate.partition]");
    };
    let how = parse_partitioner(&part.partitioner).context("simulate.partition.partitioner")?;
    if how == Partitioner::Natural && part.group.is_none() {
        bail!("simulate.partition: the natural split needs `group`, a column of data.exclude");
    }
    let d = &config.data;
    if d.format != confide_core::DataFormat::Csv {
        bail!("simulate.partition splits CSV data only");
    }
    let Some(label) = d.label.clone() else {
        bail!("data.label is missing");
    };
    let spec = CsvSpec {
        has_header: d.has_header,
        label,
        exclude: d.exclude.clone(),
    };
    let shown = part.data.display().to_string();
    let data = load_csv(&part.data, &spec, config.model.classes)?;
    let groups = match &part.group {
        Some(g) => {
            let file = std::fs::File::open(&part.data).with_context(|| shown.clone())?;
            Some(read_column(file, &shown, d.has_header, g)?)
        }
        None => None,
    };
    let seed = part.seed.unwrap_or(config.job.seed);
    let parts = partition(&data.labels, groups.as_deref(), part.owners, &how, seed)?;
    if let Some(i) = parts.iter().position(Vec::is_empty) {
        bail!(
            "simulate.partition: owner-{:03} would get no records from {} ({}, seed {seed}); choose fewer owners, another seed or a less skewed split",
            i + 1,
            shown,
            part.partitioner
        );
    }
    if parts.len() > 10_000 {
        bail!(
            "simulate.partition: the natural split makes {} owners; at most 10000",
            parts.len()
        );
    }
    // The source's records, to copy each owner's rows exactly as they are.
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(&part.data)
        .with_context(|| shown.clone())?;
    let mut records = reader.records();
    let header = if d.has_header {
        Some(records.next().context("the dataset is empty")??)
    } else {
        None
    };
    let rows: Vec<csv::StringRecord> = records.collect::<Result<_, _>>()?;
    if rows.len() != data.labels.len() {
        bail!(
            "{shown}: {} data rows, but {} CSV records (blank or whitespace-only lines?): the owners' files cannot be cut from it",
            data.labels.len(),
            rows.len()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let mut parties = Vec::with_capacity(parts.len());
    let mut owners = Vec::with_capacity(parts.len());
    for (i, indices) in parts.iter().enumerate() {
        let name = format!("owner-{:03}", i + 1);
        let path = dir.join(format!("{name}.csv"));
        let mut w = csv::Writer::from_path(&path).with_context(|| path.display().to_string())?;
        if let Some(h) = &header {
            w.write_record(h)?;
        }
        let mut counts = vec![0usize; config.model.classes];
        for &r in indices {
            w.write_record(&rows[r])?;
            counts[data.labels[r] as usize] += 1;
        }
        w.flush()?;
        owners.push(json!({
            "name": name,
            "records": indices.len(),
            "label_counts": counts,
            "group": (how == Partitioner::Natural)
                .then(|| groups.as_ref().and_then(|g| indices.first().map(|&r| g[r].clone())))
                .flatten(),
        }));
        parties.push(PartySection {
            name,
            data: path,
            policy: None,
        });
    }
    let summary = json!({
        "data": shown,
        "partitioner": part.partitioner,
        "seed": seed,
        "owners": owners,
    });
    std::fs::write(
        dir.join("partition.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok((parties, summary))
}
