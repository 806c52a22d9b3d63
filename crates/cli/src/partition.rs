//! `confide data partition`: splits one dataset among simulated owners with a seeded
//! partitioner (`confide_ml::partition`), prints each owner's size and label counts as JSON,
//! and draws the label distribution per owner as an SVG.

use std::path::{Path, PathBuf};

use confide_core::PartySection;

use anyhow::{Context, Result, bail};
use confide_core::DataFormat;
use confide_ml::arrays::{Records, read_arrays, write_arrays};
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
    let d = &config.data;
    let shown = part.data.display().to_string();
    let (data, groups) = match d.format {
        DataFormat::Csv => {
            if how == Partitioner::Natural && part.group.is_none() {
                bail!(
                    "simulate.partition: the natural split needs `group`, a column of data.exclude"
                );
            }
            let Some(label) = d.label.clone() else {
                bail!("data.label is missing");
            };
            let spec = CsvSpec {
                has_header: d.has_header,
                label,
                exclude: d.exclude.clone(),
            };
            let data = load_csv(&part.data, &spec, config.model.classes)?;
            let groups = match &part.group {
                Some(g) => {
                    let file = std::fs::File::open(&part.data).with_context(|| shown.clone())?;
                    Some(read_column(file, &shown, d.has_header, g)?)
                }
                None => None,
            };
            (data, groups)
        }
        DataFormat::Safetensors => {
            let bytes = std::fs::read(&part.data).with_context(|| shown.clone())?;
            let arrays = read_arrays(&bytes, &shown, d.feature_count, config.model.classes)?;
            let groups = match (&how, arrays.groups) {
                (Partitioner::Natural, Some(g)) => {
                    Some(g.iter().map(i64::to_string).collect::<Vec<_>>())
                }
                (Partitioner::Natural, None) => {
                    bail!("{shown}: the natural split needs a `group` tensor in the file")
                }
                _ => None,
            };
            (arrays.data, groups)
        }
        DataFormat::Text => bail!("simulate.partition splits CSV or safetensors data, not text"),
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
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let written = match d.format {
        DataFormat::Csv => write_csv_parts(&part.data, d.has_header, &parts, dir)?,
        _ => write_array_parts(&data, &parts, dir)?,
    };
    let mut parties = Vec::with_capacity(parts.len());
    let mut owners = Vec::with_capacity(parts.len());
    for ((i, indices), path) in parts.iter().enumerate().zip(written) {
        let name = format!("owner-{:03}", i + 1);
        let mut counts = vec![0usize; config.model.classes];
        for &r in indices {
            counts[data.labels[r] as usize] += 1;
        }
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

/// Each owner's rows of a CSV source (its fields, header first) as `dir/owner-NNN.csv`.
fn write_csv_parts(
    source: &Path,
    has_header: bool,
    parts: &[Vec<usize>],
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let shown = source.display().to_string();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(source)
        .with_context(|| shown.clone())?;
    let mut records = reader.records();
    let header = if has_header {
        Some(records.next().context("the dataset is empty")??)
    } else {
        None
    };
    let rows: Vec<csv::StringRecord> = records.collect::<Result<_, _>>()?;
    let total: usize = parts.iter().map(Vec::len).sum();
    if rows.len() != total {
        bail!(
            "{shown}: {total} data rows, but {} CSV records (blank or whitespace-only lines?): the owners' files cannot be cut from it",
            rows.len()
        );
    }
    let mut paths = Vec::with_capacity(parts.len());
    for (i, indices) in parts.iter().enumerate() {
        let path = dir.join(format!("owner-{:03}.csv", i + 1));
        let mut w = csv::Writer::from_path(&path).with_context(|| path.display().to_string())?;
        if let Some(h) = &header {
            w.write_record(h)?;
        }
        for &r in indices {
            w.write_record(&rows[r])?;
        }
        w.flush()?;
        paths.push(path);
    }
    Ok(paths)
}

/// Each owner's records of an array source as `dir/owner-NNN.safetensors` (`x` as `F32`,
/// already scaled, so the owner reads the same numbers).
fn write_array_parts(
    data: &confide_ml::Dataset,
    parts: &[Vec<usize>],
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::with_capacity(parts.len());
    for (i, indices) in parts.iter().enumerate() {
        let part = data.select(indices);
        let bytes = write_arrays(
            &[data.feature_count],
            Records::Values(&part.features),
            &part.labels,
            None,
        )?;
        let path = dir.join(format!("owner-{:03}.safetensors", i + 1));
        std::fs::write(&path, bytes).with_context(|| path.display().to_string())?;
        paths.push(path);
    }
    Ok(paths)
}

/// `confide data convert`.
#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// An IDX image file (`[count, rows, cols]` bytes), gzipped or not.
    #[arg(long)]
    pub images: PathBuf,
    /// The IDX label file that goes with it (`[count]`).
    #[arg(long)]
    pub labels: PathBuf,
    /// Number of classes (labels must be below it).
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// A CSV with one row per image, in image order after `--select`, holding each image's
    /// group (MNIST's writers.csv); its `label` column, when present, must agree with the
    /// label file.
    #[arg(long, requires = "group_column")]
    pub groups: Option<PathBuf>,
    /// The group column of `--groups` (an integer per row, e.g. writer_id).
    #[arg(long, requires = "groups")]
    pub group_column: Option<String>,
    /// Keep only the `--groups` rows whose COLUMN equals VALUE (e.g. split=train).
    #[arg(long, value_name = "COLUMN=VALUE", requires = "groups")]
    pub select: Option<String>,
    /// Keep only the images of the first N groups, in ascending group order.
    #[arg(long, requires = "groups")]
    pub max_groups: Option<usize>,
    /// The safetensors file to write (`x` U8 `[n, rows, cols]`, `y`, and `group` with
    /// `--groups`).
    #[arg(long)]
    pub out: PathBuf,
}

/// `confide data convert`: IDX images and labels (and a group per image) to the one-file
/// safetensors format jobs read with `[data] format = "safetensors"`.
pub fn convert(args: &ConvertArgs) -> Result<Value> {
    let images = confide_ml::idx::load_idx(&args.images)?;
    let labels = confide_ml::idx::load_idx(&args.labels)?;
    let Some((&n, shape)) = images.dims.split_first() else {
        bail!(
            "{}: an image file needs a record axis",
            args.images.display()
        );
    };
    let shape = shape.to_vec();
    let width: usize = shape.iter().product();
    if labels.dims != [n] {
        bail!(
            "{}: {n} images but labels of shape {:?}",
            args.labels.display(),
            labels.dims
        );
    }
    if let Some(i) = labels
        .data
        .iter()
        .position(|&l| usize::from(l) >= args.classes)
    {
        bail!(
            "{}: the label of image {i} is not below {}",
            args.labels.display(),
            args.classes
        );
    }
    let image_labels: Vec<u32> = labels.data.iter().map(|&l| u32::from(l)).collect();
    let groups: Option<Vec<i64>> = match (&args.groups, &args.group_column) {
        (Some(path), Some(column)) => {
            let shown = path.display().to_string();
            let mut reader = csv::Reader::from_path(path).with_context(|| shown.clone())?;
            let header = reader.headers()?.clone();
            let at = |name: &str| header.iter().position(|h| h == name);
            let group_at = at(column).with_context(|| format!("{shown}: no column `{column}`"))?;
            let select = match &args.select {
                Some(s) => {
                    let (col, value) = s.split_once('=').context("--select takes COLUMN=VALUE")?;
                    Some((
                        at(col).with_context(|| format!("{shown}: no column `{col}`"))?,
                        value,
                    ))
                }
                None => None,
            };
            let label_at = at("label");
            let mut out = Vec::with_capacity(n);
            for (line, record) in reader.records().enumerate() {
                let record = record?;
                if select.is_some_and(|(c, v)| record.get(c) != Some(v)) {
                    continue;
                }
                let i = out.len();
                if i >= n {
                    bail!("{shown}: more selected rows than the {n} images");
                }
                let group: i64 = record
                    .get(group_at)
                    .and_then(|g| g.parse().ok())
                    .with_context(|| {
                        format!("{shown}:{}: `{column}` is not an integer", line + 2)
                    })?;
                if let Some(l) = label_at
                    && record.get(l).and_then(|v| v.parse::<u32>().ok()) != Some(image_labels[i])
                {
                    bail!(
                        "{shown}:{}: its label disagrees with image {i}'s: the rows are not in image order",
                        line + 2
                    );
                }
                out.push(group);
            }
            if out.len() != n {
                bail!("{shown}: {} selected rows for {n} images", out.len());
            }
            Some(out)
        }
        _ => None,
    };
    // The images of the first `max_groups` groups.
    let keep: Vec<usize> = match (&groups, args.max_groups) {
        (Some(g), Some(max)) => {
            let mut distinct: Vec<i64> = g.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let kept: std::collections::BTreeSet<i64> = distinct.into_iter().take(max).collect();
            (0..n).filter(|&i| kept.contains(&g[i])).collect()
        }
        _ => (0..n).collect(),
    };
    let pixels: Vec<u8> = keep
        .iter()
        .flat_map(|&i| images.data[i * width..(i + 1) * width].iter().copied())
        .collect();
    if keep.is_empty() {
        bail!("no images to write (an empty image file, or --max-groups 0)");
    }
    let kept_labels: Vec<u32> = keep.iter().map(|&i| image_labels[i]).collect();
    let kept_groups: Option<Vec<i64>> = groups
        .as_ref()
        .map(|g| keep.iter().map(|&i| g[i]).collect());
    let bytes = write_arrays(
        &shape,
        Records::Pixels(&pixels),
        &kept_labels,
        kept_groups.as_deref(),
    )?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    }
    std::fs::write(&args.out, bytes).with_context(|| args.out.display().to_string())?;
    let distinct = kept_groups.as_ref().map(|g| {
        g.iter()
            .copied()
            .collect::<std::collections::BTreeSet<i64>>()
            .len()
    });
    Ok(json!({
        "out": args.out.display().to_string(),
        "records": keep.len(),
        "shape": shape,
        "groups": distinct,
    }))
}
