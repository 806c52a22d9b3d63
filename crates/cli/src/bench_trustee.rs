//! `confide bench trustee`: the trustees' DKG for several group sizes against a trusted
//! dealer's split, and one read (the trustee's checks and share, the reader's verification and
//! combination) against one key holder decrypting with the whole key, in one process.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use confide_trustee::secret::{self, Label, ReadRequest, Write};
use confide_trustee::trustee::{Grant, Trustee};
use serde_json::json;

/// Options of `confide bench trustee`.
#[derive(clap::Args, Debug)]
pub struct TrusteeBench {
    /// Group sizes n; the threshold is t = n − ⌊(n − 1)/3⌋ (a faulty third tolerated).
    #[arg(long, value_delimiter = ',', default_value = "4,7,16")]
    sizes: Vec<u16>,
    /// DKG runs per size.
    #[arg(long, default_value_t = 3)]
    dkg_repeats: u32,
    /// Reads per size.
    #[arg(long, default_value_t = 50)]
    reads: u32,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Runs the benchmark and prints its figures as JSON.
pub fn run(b: &TrusteeBench) -> Result<i32> {
    let mut rng = rand::thread_rng();
    let mut rows = Vec::new();
    for &n in &b.sizes {
        anyhow::ensure!(n >= 2, "--sizes: each n must be at least 2");
        anyhow::ensure!(
            b.dkg_repeats >= 1 && b.reads >= 1,
            "--dkg-repeats and --reads must be at least 1"
        );
        let t = n - (n - 1) / 3;
        let started = Instant::now();
        let mut shares = Vec::new();
        for _ in 0..b.dkg_repeats {
            shares = confide_trustee::dkg::run_local(n, t, &mut rng)?;
        }
        let dkg_ms = ms(started) / f64::from(b.dkg_repeats.max(1));
        let started = Instant::now();
        for _ in 0..b.dkg_repeats {
            confide_trustee::dkg::dealer_baseline(n, t, &mut rng)?;
        }
        let dealer_ms = ms(started) / f64::from(b.dkg_repeats.max(1));

        let group = shares[0].group.clone();
        let label = Label {
            policy: "bench-policy".into(),
            owner: "owner".into(),
            envelope: "bench-envelope".into(),
            epoch: group.digest(),
        };
        let write = Write::seal(&group.key, &[9u8; 32], label, &mut rng);
        let trustees: Vec<Trustee> = shares
            .iter()
            .take(usize::from(t))
            .map(|s| Trustee::new(s.clone(), Arc::new(confide_store::MemoryStore::default())))
            .collect();
        for tr in &trustees {
            tr.accept_write("owner", &write)?;
            tr.grant(
                "owner",
                &Grant {
                    write: write.id(),
                    owner: "owner".into(),
                    reader: "reader".into(),
                    purpose: "train".into(),
                    job: "*".into(),
                },
            )?;
        }
        let (mut trustee_ms, mut reader_ms) = (0.0, 0.0);
        for i in 0..b.reads {
            let started = Instant::now();
            let (req, key) = ReadRequest::new(
                &write.id(),
                "reader",
                &format!("job-{i}"),
                "train",
                &mut rng,
            );
            reader_ms += ms(started);
            let mut answers = Vec::new();
            for tr in &trustees {
                let started = Instant::now();
                answers.push(tr.reencrypt("reader", &req, &mut rng)?);
                trustee_ms += ms(started);
            }
            let started = Instant::now();
            let opened = secret::open(&group, &write, &key, &answers)?;
            reader_ms += ms(started);
            anyhow::ensure!(
                opened.secret == [9u8; 32],
                "the read opened the wrong secret"
            );
        }
        let reads = f64::from(b.reads.max(1));
        let trustee_ms = trustee_ms / reads / f64::from(t);
        let reader_ms = reader_ms / reads;
        // The baseline: one party holds the whole key and decrypts.
        let whole = secret::whole_key(&shares[..usize::from(t)]);
        // Warm up, then time.
        secret::open_with_key(&whole, &write);
        let started = Instant::now();
        for _ in 0..b.reads {
            anyhow::ensure!(
                secret::open_with_key(&whole, &write) == [9u8; 32],
                "whole-key decryption"
            );
        }
        let single_ms = ms(started) / reads;
        rows.push(json!({
            "n": n,
            "t": t,
            "dkg_ms_all_trustees": dkg_ms,
            "dkg_ms_per_trustee": dkg_ms / f64::from(n),
            "dealer_split_ms": dealer_ms,
            "dkg_vs_dealer": dkg_ms / dealer_ms.max(1e-9),
            "read_trustee_ms": trustee_ms,
            "read_reader_ms": reader_ms,
            "single_key_decrypt_ms": single_ms,
            "read_vs_single_key": (trustee_ms + reader_ms) / single_ms.max(1e-9),
        }));
    }
    outln!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "benchmark": "trustee",
            "note": "one thread, in memory (no network, no fsync). DKG: frost-ristretto255 part1-3 for all n trustees in turn, and each trustee's share of that work; baseline: a trusted dealer's split. Read: per trustee, the request's key proof, the grant check and the share with its DLEQ proof; for the reader, its key proof, then verifying t shares and combining them; baseline: one key holder decrypting with the whole key. CALYPSO reports 0.2-8 s per read for 16-128 trustees.",
            "results": rows,
        }))?
    );
    Ok(0)
}
