//! `confide bench paillier`: Paillier throughput and round times, each with a `plain` baseline
//! measured in the same run. Prints JSON. All measurements run on one thread.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use confide_core::SchemeKind;
use confide_crypto::{FixedPoint, PackingLayout, SecretKey, SecretKeyJson};
use confide_secagg::{
    AggregationClient, HolderPublicKey, PaillierClient, PlainClient, SchemeParams,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::json;

use crate::simulate::{ModeArg, SchemeArg, SimulateArgs, simulate};

/// Benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Paillier operations, packed throughput and breast_homo round times against `plain`.
    Paillier(PaillierBench),
    /// DP-SGD against plain SGD on the same MLP, batch 256, noise included.
    Dpsgd(DpsgdBench),
    /// Secure aggregation schemes on one update size and owner counts: client time, server
    /// time and bytes uploaded per client of every scheme (`plain`, `masking`, `shares`,
    /// `threshold`, `lattice`, `paillier`), in one run.
    Secagg(SecaggBench),
    /// Attestation verification of the published SGX, TDX and SEV-SNP samples and of dev-TEE
    /// evidence, against the dev TEE's Ed25519 check as the baseline.
    Attest(AttestBench),
    /// The confidential mode's cryptography (attestation, envelopes, sealing, release)
    /// against the same DP-SGD training without it.
    Confidential(crate::bench_confidential::ConfidentialBench),
    /// A job through the standing daemons (`confide coordinator serve` and the others)
    /// against the same job one-shot (`confide simulate`), in one run; with --soak N, then N
    /// small jobs back to back, two at a time, with the coordinator's memory and store size.
    Service(crate::bench_service::ServiceBench),
    /// The trustees' DKG for n = 4, 7 and 16 against a trusted dealer's split, and one read
    /// (each trustee's checks and share, the reader's verification and combination) against
    /// one key holder decrypting with the whole key.
    Trustee(crate::bench_trustee::TrusteeBench),
    /// The node dashboard's views rendered from a store of 200 jobs, with their sizes,
    /// against the inbox's JSON listing as the baseline; and "verify now" on their log.
    Dashboard(crate::bench_dashboard::DashboardBench),
}

/// Options of `confide bench attest`.
#[derive(clap::Args, Debug)]
pub struct AttestBench {
    /// Verifications per evidence type.
    #[arg(long, default_value_t = 200)]
    repeats: u32,
}

/// Options of `confide bench secagg`.
#[derive(clap::Args, Debug)]
pub struct SecaggBench {
    /// Weights per update.
    #[arg(long, default_value_t = 100_000)]
    weights: usize,
    /// Owner counts (repeatable).
    #[arg(long, default_values_t = [10, 100])]
    owners: Vec<usize>,
    /// Masking: neighbours per owner on sparse graphs (owner counts up to this + 1 use the
    /// complete graph).
    #[arg(long, default_value_t = 20)]
    neighbours: usize,
    /// Masking: the fraction of owners that drop out after sharing their keys in the second
    /// measurement (their pairwise masks must be rebuilt and removed).
    #[arg(long, default_value_t = 0.1)]
    dropout: f64,
    /// Skip `paillier` (its client encrypts the whole update: tens of seconds at 100k weights).
    #[arg(long)]
    no_paillier: bool,
    /// Skip `shares` (each aggregator checks a proof per owner: minutes for 100 owners at
    /// 100k weights, and the owners' uploads take gigabytes of memory).
    #[arg(long)]
    no_shares: bool,
}

/// Options of `confide bench dpsgd`.
#[derive(clap::Args, Debug)]
pub struct DpsgdBench {
    /// The digits CSV (64 pixel columns, then the label; with a header).
    #[arg(long, default_value = "data/digits/digits_train.csv")]
    digits: PathBuf,
    /// Steps per measurement (each measurement is repeated and the fastest kept).
    #[arg(long, default_value_t = 60)]
    steps: u64,
    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 3)]
    repeats: u32,
}

/// Options of `confide bench paillier`.
#[derive(clap::Args, Debug)]
pub struct PaillierBench {
    /// Job file for the round-time measurement.
    #[arg(long, default_value = "examples/breast_homo.toml")]
    config: PathBuf,
    /// Rounds per scheme for the round-time measurement.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Operations per micro-benchmark.
    #[arg(long, default_value_t = 50)]
    ops: usize,
    /// Weights in the packed-throughput measurement.
    #[arg(long, default_value_t = 20_000)]
    weights: usize,
    /// Secret key file (default: the committed TEST-ONLY key; throughput does not depend on
    /// which key is used).
    #[arg(long)]
    key: Option<PathBuf>,
}

pub async fn run(cmd: BenchCommand) -> Result<i32> {
    match cmd {
        BenchCommand::Paillier(b) => paillier(b).await,
        BenchCommand::Dpsgd(b) => dpsgd(&b),
        BenchCommand::Secagg(b) => secagg(&b),
        BenchCommand::Attest(b) => attest(&b),
        BenchCommand::Confidential(b) => crate::bench_confidential::run(&b),
        BenchCommand::Trustee(b) => crate::bench_trustee::run(&b),
        BenchCommand::Dashboard(b) => {
            tokio::task::spawn_blocking(move || crate::bench_dashboard::run(&b)).await?
        }
        BenchCommand::Service(b) => {
            tokio::task::spawn_blocking(move || crate::bench_service::run(&b)).await?
        }
    }
}

fn bench_key() -> Result<confide_crypto::SigningKey> {
    let rng = ring::rand::SystemRandom::new();
    let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("key generation failed"))?;
    Ok(confide_crypto::SigningKey::from_pkcs8_der(der.as_ref())?)
}

/// Signs and verifies (the server only takes verified contributions); not timed.
fn verified(
    key: &confide_crypto::SigningKey,
    owner: &str,
    stage: u32,
    payload: Vec<u8>,
) -> Result<confide_secagg::VerifiedContribution> {
    let c = confide_secagg::sign_contribution(
        key,
        &[0; 32],
        confide_secagg::Unsigned {
            owner: owner.into(),
            round: 1,
            stage,
            model_digest: [1; 32],
            payload,
        },
    );
    Ok(confide_secagg::contribution::verify(
        c,
        &key.public_key(),
        &[0; 32],
    )?)
}

/// One masking round with `n` owners; owners in `drop_after_keys` stop after stage 1.
/// Returns (per-client seconds, server seconds, bytes per client, sum is right).
fn masking_round(
    n: usize,
    k: usize,
    update: &[i64],
    drop_after_keys: &std::collections::BTreeSet<usize>,
    key: &confide_crypto::SigningKey,
) -> Result<(Vec<f64>, f64, Vec<usize>, bool)> {
    use confide_secagg::masking::{MaskingClient, MaskingConfig, MaskingServer};
    use confide_secagg::{AggregationServer, RoundContext, StageResult};
    let owners: Vec<String> = (0..n).map(|i| format!("o{i:04}")).collect();
    let (k, t) = confide_core::config::MaskingSection {
        neighbours: Some(k),
        threshold: None,
    }
    .effective(n);
    let cfg = MaskingConfig {
        owners: owners.clone(),
        neighbours: k,
        threshold: t,
        len: update.len(),
        round: 1,
        graph_seed: [3; 32],
        min_owners: 2,
    };
    let ctx = RoundContext {
        round: 1,
        model_digest: [1; 32],
    };
    let mut server = MaskingServer::new(cfg.clone(), ctx)?;
    let mut clients = owners
        .iter()
        .map(|o| {
            let mut seed = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
            let public = key.public_key().to_vec();
            // Each owner checks the advertised keys' and U3's signatures, as a node does.
            let check: confide_secagg::masking::KeyCheck =
                Box::new(move |owner, stage, payload, sig| {
                    let c = confide_secagg::Contribution {
                        owner: owner.to_string(),
                        round: 1,
                        stage,
                        model_digest: [1; 32],
                        payload: payload.to_vec(),
                        signature: sig.to_vec(),
                    };
                    confide_secagg::contribution::verify(c, &public, &[0; 32])
                        .map(drop)
                        .map_err(|e| e.to_string())
                });
            MaskingClient::new(cfg.clone(), o, seed, check)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut client_s = vec![0.0; n];
    let mut bytes = vec![0usize; n];
    let mut server_s = 0.0;
    let mut alive: std::collections::BTreeSet<usize> = (0..n).collect();
    let mut broadcast = Vec::new();
    for stage in 0..5u32 {
        if stage == 2 {
            alive.retain(|i| !drop_after_keys.contains(i));
        }
        for &i in &alive {
            let (payload, secs) = time(|| {
                if stage == 0 {
                    confide_secagg::AggregationClient::start(&mut clients[i], update)
                } else {
                    confide_secagg::AggregationClient::on_broadcast(
                        &mut clients[i],
                        stage,
                        &broadcast,
                    )
                }
            });
            let payload = payload?;
            client_s[i] += secs;
            bytes[i] += payload.len();
            let c = verified(key, &owners[i], stage, payload)?;
            let (accepted, secs) = time(|| server.accept(c));
            server_s += secs;
            accepted.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let survivors = alive.iter().map(|&i| owners[i].clone()).collect();
        let (closed, secs) = time(|| server.close_stage(&survivors));
        server_s += secs;
        match closed? {
            StageResult::Broadcast { payload, .. } => broadcast = payload,
            StageResult::Sum(sum) => {
                let want: Vec<i128> = update
                    .iter()
                    .map(|&v| i128::from(v) * alive.len() as i128)
                    .collect();
                return Ok((client_s, server_s, bytes, sum.sums == want));
            }
            StageResult::External(_) => anyhow::bail!("masking asked for an external party"),
        }
    }
    anyhow::bail!("no sum after five stages")
}

/// One round of `shares` or `threshold` with `params.owners` owners sending the same update:
/// one client's sharing and encryption, the coordinator's checks, each aggregator's work
/// (signature checks, decryption, proof verification, partial sum; mean and max over the
/// aggregators that answered) and the coordinator's reconstruction, with the sum checked.
/// Aggregators in `faulty` crash if their index is the first listed and lie otherwise.
fn multi_round(
    kind: SchemeKind,
    n_aggs: usize,
    t: usize,
    params: &SchemeParams,
    update: &[i64],
    key: &confide_crypto::SigningKey,
    faulty: &[usize],
) -> Result<serde_json::Value> {
    use confide_secagg::aggregators::{FinishRequest, MultiParams, parse_public_key};
    use confide_secagg::{
        Aggregator, AggregatorKey, ExternalRequest, ExternalResult, MultiClient, MultiServer,
        StageResult,
    };
    let n = params.owners;
    let multi = MultiParams::new(kind, n_aggs, t, params.clone(), [0; 32])?;
    let owners: std::collections::BTreeSet<String> = (0..n).map(|i| format!("o{i:04}")).collect();
    let mut aggs = (0..n_aggs)
        .map(|i| {
            Ok(Aggregator::new(
                i,
                AggregatorKey::generate(),
                bench_key()?,
                multi.clone(),
                (kind == SchemeKind::Shares).then_some([7; 32]),
                owners.clone(),
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    let signers: Vec<Option<[u8; 32]>> = aggs.iter().map(|a| Some(a.signer_key())).collect();
    let keys = aggs
        .iter()
        .map(|a| parse_public_key(&a.public_hex()).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let mut client = MultiClient::new(multi.clone(), &keys, "o0000", rand::random())?;
    let (payload, client_s) = time(|| client.start(update));
    let payload = payload?;
    // The other owners reuse the shares but encrypt them under their own names (the
    // encryption binds the owner).
    let plaintexts = client.plaintexts(update)?;
    let ctx = confide_secagg::RoundContext {
        round: 1,
        model_digest: [1; 32],
    };
    let mut server = MultiServer::new(multi.clone(), ctx);
    let mut coordinator_s = 0.0;
    // Every owner sends the same shares; each encrypts and signs its own contribution.
    for o in &owners {
        let own = MultiClient::new(multi.clone(), &keys, o, [0; 32])?.seal(&plaintexts)?;
        let c = verified(key, o, 0, own)?;
        let (r, s) = time(|| confide_secagg::AggregationServer::accept(&mut server, c));
        r.map_err(|e| anyhow::anyhow!("{e}"))?;
        coordinator_s += s;
    }
    let upload = payload.len();
    drop((payload, plaintexts));
    let StageResult::External(ExternalRequest::Aggregate { contributions, .. }) =
        confide_secagg::AggregationServer::close_stage(&mut server, &owners)?
    else {
        anyhow::bail!("the scheme did not ask for its aggregators");
    };
    let names: Vec<String> = contributions.iter().map(|c| c.owner.clone()).collect();
    let mut relayed: Vec<_> = contributions
        .into_iter()
        .map(|c| (c, key.public_key().to_vec()))
        .collect();
    let crashed = faulty.first().copied();
    let mut agg_s = vec![0.0; n_aggs];
    let mut answers = Vec::with_capacity(n_aggs);
    for (i, a) in aggs.iter_mut().enumerate() {
        if Some(i) == crashed {
            answers.push(None);
            continue;
        }
        // The last aggregator takes the relayed contributions themselves (no copy).
        let input = if i + 1 == n_aggs {
            std::mem::take(&mut relayed)
        } else {
            relayed.clone()
        };
        let (r, s) = time(|| a.prepare(1, input));
        agg_s[i] += s;
        answers.push(Some(r.map_err(|e| anyhow::anyhow!("{e}"))?));
    }
    let request = FinishRequest::assemble(1, names, &answers);
    // Step 3 (commit) and step 4 (release), each timed per aggregator.
    let mut commits = vec![Vec::new(); n_aggs];
    for (i, a) in aggs.iter_mut().enumerate() {
        if Some(i) == crashed {
            continue;
        }
        let (r, s) = time(|| a.commit(&request, &signers));
        agg_s[i] += s;
        commits[i] = r.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut replies = Vec::with_capacity(n_aggs);
    for (i, a) in aggs.iter_mut().enumerate() {
        if Some(i) == crashed {
            replies.push(None);
            continue;
        }
        let (r, s) = time(|| a.release(1, &commits, &signers));
        agg_s[i] += s;
        let mut reply = r.map_err(|e| anyhow::anyhow!("{e}"))?;
        if faulty.iter().skip(1).any(|&f| f == i) {
            reply.aggregate[3] ^= 1;
        }
        replies.push(Some(reply));
    }
    let (sum, decode_s) = time(|| {
        confide_secagg::AggregationServer::finish(
            &mut server,
            ExternalResult::Aggregated { request, replies },
        )
    });
    let sum = sum?;
    let exact = sum
        .sums
        .iter()
        .zip(update)
        .all(|(s, &u)| *s == i128::from(u) * n as i128);
    anyhow::ensure!(exact, "{}: wrong sum", kind.as_str());
    let answered: Vec<f64> = agg_s
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != crashed)
        .map(|(_, s)| *s)
        .collect();
    Ok(json!({
        "aggregators": n_aggs,
        "threshold": t,
        "client_ms": client_s * 1e3,
        "aggregator": stats(&answered),
        "aggregator_ms_per_owner": answered.iter().sum::<f64>() / answered.len().max(1) as f64 * 1e3 / n as f64,
        "coordinator_checks_ms": coordinator_s * 1e3,
        "coordinator_reconstruct_ms": decode_s * 1e3,
        "upload_bytes": upload,
        "crashed": crashed.map(confide_secagg::aggregators::aggregator_name),
        "faulty_named": sum.faulty,
        "sum_exact": exact,
    }))
}

/// One round of a key-holder scheme with `params.owners` owners sending the same update: one
/// client's encryption, the coordinator's checks of every contribution, and the key holder's
/// work (signature checks, homomorphic sum, decryption), with the decoded sum checked.
fn keyholder_round(
    holder: confide_secagg::HolderKey,
    published: &HolderPublicKey,
    params: &SchemeParams,
    update: &[i64],
    key: &confide_crypto::SigningKey,
) -> Result<serde_json::Value> {
    use confide_secagg::{ExternalRequest, ExternalResult, StageResult};
    let n = params.owners;
    let mut client = published.client(params, rand::random())?;
    let (payload, client_s) = time(|| client.start(update));
    let payload = payload?;
    let owners: std::collections::BTreeSet<String> = (0..n).map(|i| format!("o{i:04}")).collect();
    let ctx = confide_secagg::RoundContext {
        round: 1,
        model_digest: [1; 32],
    };
    let mut server = published.server(params, ctx)?;
    let mut coordinator_s = 0.0;
    for o in &owners {
        let c = verified(key, o, 0, payload.clone())?;
        let (r, s) = time(|| server.accept(c));
        r.map_err(|e| anyhow::anyhow!("{e}"))?;
        coordinator_s += s;
    }
    let StageResult::External(ExternalRequest::Unseal { contributions, .. }) =
        server.close_stage(&owners)?
    else {
        anyhow::bail!("the scheme did not ask for its key holder");
    };
    let mut unsealer =
        confide_secagg::Unsealer::new(holder, [0; 32], owners, params.clone(), Vec::new())?;
    let relayed = contributions
        .into_iter()
        .map(|c| (c, key.public_key().to_vec()))
        .collect();
    let (plaintexts, server_s) = time(|| unsealer.unseal(1, relayed, |_| Ok(())));
    let plaintexts = plaintexts.map_err(|e| anyhow::anyhow!("{e}"))?;
    let sum = server.finish(ExternalResult::Unsealed(plaintexts))?;
    let exact = sum
        .sums
        .iter()
        .zip(update)
        .all(|(s, &u)| *s == i128::from(u) * n as i128);
    anyhow::ensure!(exact, "{}: wrong sum", server.kind().as_str());
    Ok(json!({
        "client_ms": client_s * 1e3,
        "server_ms": server_s * 1e3,
        "server_is": "the key holder: signature checks, homomorphic sum, decryption",
        "coordinator_checks_ms": coordinator_s * 1e3,
        "upload_bytes": payload.len(),
        "sum_exact": exact,
    }))
}

fn stats(v: &[f64]) -> serde_json::Value {
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    let max = v.iter().copied().fold(0.0, f64::max);
    json!({ "mean_ms": mean * 1e3, "max_ms": max * 1e3 })
}

fn secagg(b: &SecaggBench) -> Result<i32> {
    let fp = FixedPoint::new(24, 4.0)?;
    let update: Vec<i64> = (0..b.weights)
        .map(|i| fp.encode(((i % 97) as f32 - 48.0) / 50.0))
        .collect();
    let key = bench_key()?;
    let sk = {
        let json: SecretKeyJson = serde_json::from_str(include_str!(
            "../../crypto/testdata/paillier-2048-TEST-ONLY.json"
        ))?;
        SecretKey::from_json(&json, false)?
    };
    let mut results = Vec::new();
    for &n in &b.owners {
        let mut row = serde_json::Map::new();
        row.insert("owners".into(), json!(n));
        row.insert("weights".into(), json!(b.weights));
        let params = SchemeParams {
            fixed: fp,
            len: b.weights,
            owners: n,
            min_owners: 2,
        };

        // plain: the baseline.
        let (payload, client_s) = time(|| PlainClient.start(&update));
        let payload = payload?;
        let mut server = confide_secagg::PlainServer::new(
            params.clone(),
            confide_secagg::RoundContext {
                round: 1,
                model_digest: [1; 32],
            },
        );
        let mut server_s = 0.0;
        for i in 0..n {
            let c = verified(&key, &format!("o{i:04}"), 0, payload.clone())?;
            let (r, s) = time(|| confide_secagg::AggregationServer::accept(&mut server, c));
            r.map_err(|e| anyhow::anyhow!("{e}"))?;
            server_s += s;
        }
        let all = (0..n).map(|i| format!("o{i:04}")).collect();
        let (r, s) = time(|| confide_secagg::AggregationServer::close_stage(&mut server, &all));
        r?;
        server_s += s;
        let plain_server = server_s;
        row.insert(
            "plain".into(),
            json!({ "client_ms": client_s * 1e3, "server_ms": server_s * 1e3, "upload_bytes": payload.len() }),
        );

        // masking, without and with dropouts after the key sharing.
        let k = b.neighbours;
        let (cs, ss, bytes, ok) = masking_round(n, k, &update, &Default::default(), &key)?;
        anyhow::ensure!(ok, "masking: wrong sum");
        let dropped: std::collections::BTreeSet<usize> = (0..n)
            .filter(|i| (*i as f64) < b.dropout * n as f64)
            .collect();
        let (_, ss_drop, _, ok_drop) = masking_round(n, k, &update, &dropped, &key)?;
        anyhow::ensure!(ok_drop, "masking with dropouts: wrong sum");
        let (k_eff, t) = confide_core::config::MaskingSection {
            neighbours: Some(k),
            threshold: None,
        }
        .effective(n);
        row.insert(
            "masking".into(),
            json!({
                "neighbours": k_eff,
                "threshold": t,
                "client": stats(&cs),
                "server_ms": ss * 1e3,
                "server_ms_with_dropouts": ss_drop * 1e3,
                "dropped_after_keys": dropped.len(),
                "upload_bytes": bytes.iter().sum::<usize>() / n,
                "server_vs_plain": ss / plain_server.max(1e-12),
            }),
        );

        // shares (Prio3 SumVec, 2 aggregators) at 16-bit entries, the reference figure's width,
        // and threshold (7 aggregators, any 4 reconstruct; one crashed and one lying).
        if !b.no_shares {
            let fp16 = FixedPoint::new(12, 4.0)?;
            let update16: Vec<i64> = (0..b.weights)
                .map(|i| fp16.encode(((i % 97) as f32 - 48.0) / 50.0))
                .collect();
            let p16 = SchemeParams {
                fixed: fp16,
                ..params.clone()
            };
            let mut entry = multi_round(SchemeKind::Shares, 2, 2, &p16, &update16, &key, &[])?;
            entry["encoding"] = json!("scale_bits 12, clip 4: entries in [0, 2^15], 16 bits");
            row.insert("shares".into(), entry);
        }
        let entry = multi_round(SchemeKind::Threshold, 7, 4, &params, &update, &key, &[1, 4])?;
        row.insert("threshold".into(), entry);

        // lattice: a fresh BFV key for these parameters (its generation is not a round cost).
        let lattice_sk = confide_crypto::LatticeSecretKey::generate(
            confide_secagg::lattice::lattice_params(&params)?,
            rand::random(),
        )?;
        let describe = lattice_sk.params().describe();
        let published = HolderPublicKey::Lattice(lattice_sk.public_key().clone());
        let mut entry = keyholder_round(lattice_sk.into(), &published, &params, &update, &key)?;
        entry["parameters"] = json!(describe);
        entry["server_vs_plain"] =
            json!(entry["server_ms"].as_f64().unwrap_or(0.0) / (plain_server * 1e3).max(1e-9));
        row.insert("lattice".into(), entry);

        if !b.no_paillier {
            let published = HolderPublicKey::Paillier(sk.public_key().clone());
            let mut entry = keyholder_round(sk.clone().into(), &published, &params, &update, &key)?;
            entry["modulus_bits"] = json!(sk.public_key().modulus_bits());
            row.insert("paillier".into(), entry);
        }
        results.push(serde_json::Value::Object(row));
    }
    outln!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "benchmark": "secagg",
            "threads": 1,
            "note": "every scheme measured in this run on this machine; client = one owner's work for a round, server = the aggregator's (for paillier and lattice the key holder's; for shares and threshold each aggregator's, plus the coordinator's reconstruction)",
            "results": results,
        }))?
    );
    Ok(0)
}

/// `confide bench attest`: full verification (platform signatures and collateral, policy,
/// binding) of each kind of evidence, timed per piece.
fn attest(b: &AttestBench) -> Result<i32> {
    use confide_attest::{Evidence, Policy, binding, dev::DevTee, verify};
    // Inside the samples' collateral windows (see crates/attest/testdata/SOURCE.md).
    const NOW: u64 = 1_751_328_000;
    let sgx_quote = include_bytes!("../../attest/testdata/sgx_quote");
    let tdx_quote = include_bytes!("../../attest/testdata/tdx_quote");
    let snp_report = hex::decode(include_str!("../../attest/testdata/report_milan.hex").trim())?;
    let dcap = |quote: &[u8], collateral: &str| -> Result<Evidence> {
        Ok(Evidence::Dcap {
            quote: hex::encode(quote),
            collateral: serde_json::from_str(collateral)?,
        })
    };
    let key = bench_key()?;
    let signer = key.public_key();
    let tee = DevTee::new(key, [5; 32]);
    let expected = binding(b"trainer key", &[1; 32]);
    let cases: Vec<(&str, Evidence, [u8; 64], String)> = vec![
        (
            "dev",
            tee.evidence(&expected),
            expected,
            format!(
                "[dev]\nallow = true\nsigners = [\"{}\"]\n",
                hex::encode(signer)
            ),
        ),
        (
            "sgx",
            dcap(
                sgx_quote,
                include_str!("../../attest/testdata/sgx_quote_collateral.json"),
            )?,
            sgx_quote[368..432].try_into()?,
            format!(
                "[sgx]\nmr_enclave = [\"{}\"]\ntcb_statuses = [\"ConfigurationAndSWHardeningNeeded\"]\n",
                hex::encode(&sgx_quote[112..144])
            ),
        ),
        (
            "tdx",
            dcap(
                tdx_quote,
                include_str!("../../attest/testdata/tdx_quote_collateral.json"),
            )?,
            tdx_quote[568..632].try_into()?,
            format!(
                "[tdx]\nmr_td = [\"{}\"]\nrtmr = [[\"{}\"], [\"{}\"], [\"{}\"], [\"{}\"]]\n",
                hex::encode(&tdx_quote[184..232]),
                hex::encode(&tdx_quote[376..424]),
                hex::encode(&tdx_quote[424..472]),
                hex::encode(&tdx_quote[472..520]),
                hex::encode(&tdx_quote[520..568])
            ),
        ),
        (
            "sev-snp",
            Evidence::SevSnp {
                product: "milan".into(),
                report: hex::encode(&snp_report),
                vcek: hex::encode(include_bytes!("../../attest/testdata/vcek_milan.der")),
            },
            snp_report[0x50..0x90].try_into()?,
            format!(
                "[sev_snp]\nmeasurements = [\"{}\"]\n",
                hex::encode(&snp_report[0x90..0xc0])
            ),
        ),
    ];
    let mut rows = serde_json::Map::new();
    let mut baseline = 0.0;
    for (name, evidence, rd, policy) in cases {
        let policy = Policy::parse(&policy)?;
        verify(&evidence, &policy, &rd, NOW).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let (r, secs) = time(|| {
            (0..b.repeats).try_for_each(|_| verify(&evidence, &policy, &rd, NOW).map(drop))
        });
        r.map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let ms = secs * 1e3 / f64::from(b.repeats.max(1));
        if name == "dev" {
            baseline = ms;
        }
        rows.insert(
            name.into(),
            json!({ "verify_ms": ms, "vs_dev": ms / baseline.max(1e-12) }),
        );
    }
    outln!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "benchmark": "attest",
            "repeats": b.repeats,
            "note": "one thread; full verification per piece of evidence (signature chain, collateral, policy, binding); baseline: the dev TEE's Ed25519 check",
            "results": rows,
        }))?
    );
    Ok(0)
}

fn per_sec(n: usize, secs: f64) -> f64 {
    n as f64 / secs.max(1e-12)
}

fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}

/// A noise source that times the real one: drawing (which DP-SGD overlaps with the gradient
/// computation on a second thread for models of 16k parameters and more) and adding.
struct TimedNoise {
    inner: confide_ml::dpsgd::CsprngNoise,
    draw_seconds: f64,
    apply_seconds: f64,
}

impl confide_ml::NoiseSource for TimedNoise {
    fn draw(&mut self, n: usize) -> Result<Vec<f64>, String> {
        let t = Instant::now();
        let out = self.inner.draw(n);
        self.draw_seconds += t.elapsed().as_secs_f64();
        out
    }

    fn apply(&mut self, values: &mut [f32], z: &[f64], std: f64, bound: f64) -> Result<(), String> {
        let t = Instant::now();
        let out = self.inner.apply(values, z, std, bound);
        self.apply_seconds += t.elapsed().as_secs_f64();
        out
    }
}

fn dpsgd(b: &DpsgdBench) -> Result<i32> {
    use confide_ml::dpsgd::{DpSgdConfig, train_dp};
    use confide_ml::{Column, CsvSpec, ModelKind, ModelSpec, TrainConfig};
    let batch = 256usize;
    let mut digits = confide_ml::dataset::load_csv(
        &b.digits,
        &CsvSpec {
            has_header: true,
            label: Column::Index(64),
            exclude: vec![],
        },
        10,
    )
    .with_context(|| format!("digits data {}", b.digits.display()))?;
    for v in &mut digits.features {
        *v /= 16.0;
    }
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let synthetic = {
        use rand::Rng;
        let (n, d) = (4096usize, 784usize);
        confide_ml::Dataset {
            features: (0..n * d).map(|_| rng.r#gen::<f32>()).collect(),
            labels: (0..n).map(|_| rng.gen_range(0..10)).collect(),
            feature_count: d,
            feature_names: (0..d).map(|i| format!("x{i}")).collect(),
        }
    };
    let shapes = [
        ("digits 64-64-10", digits, vec![64usize]),
        ("synthetic 784-256-10", synthetic, vec![256usize]),
    ];
    let mut results = Vec::new();
    for (name, data, hidden) in shapes {
        let spec = ModelSpec::preset(ModelKind::Mlp, data.feature_count, hidden, 10);
        let init = spec.initial_vector(1);
        // Plain SGD: fixed batches of 256 via the ML core's trainer, `steps` steps in total.
        let epochs = (b.steps as usize * batch).div_ceil(data.len()).max(1);
        let plain_rows = epochs * data.len();
        let plain_cfg = TrainConfig {
            epochs: u32::try_from(epochs)?,
            batch_size: batch,
            learning_rate: 0.05,
            l2: 0.0,
            proximal_mu: 0.0,
            seed: 1,
        };
        let dp_cfg = DpSgdConfig {
            steps: b.steps,
            sampling_rate: batch as f64 / data.len() as f64,
            learning_rate: 0.05,
            momentum: 0.0,
            l2: 0.0,
            proximal_mu: 0.0,
            clip_norm: 1.0,
            noise_multiplier: 1.0,
        };
        let mut plain_best = f64::INFINITY;
        let mut dp_best = f64::INFINITY;
        let mut noise_share = 0.0;
        let mut overlapped = false;
        let mut dp_rows = 0u64;
        for _ in 0..b.repeats.max(1) {
            let (out, t) = time(|| confide_ml::train::train(&spec, &init, &data, &plain_cfg));
            out?;
            plain_best = plain_best.min(t / plain_rows as f64);
            let mut noise = TimedNoise {
                inner: confide_ml::dpsgd::CsprngNoise::from_entropy()
                    .map_err(anyhow::Error::msg)?,
                draw_seconds: 0.0,
                apply_seconds: 0.0,
            };
            let mut sampler = ChaCha20Rng::from_entropy();
            let (out, t) = time(|| {
                train_dp(
                    &spec,
                    &init,
                    &data,
                    &dp_cfg,
                    &mut sampler,
                    &mut noise,
                    &mut |_, _| {},
                )
            });
            let out = out?;
            let per_row = t / out.sampled_records.max(1) as f64;
            if per_row < dp_best {
                dp_best = per_row;
                noise_share = (noise.draw_seconds + noise.apply_seconds) / t;
                dp_rows = out.sampled_records;
                overlapped = spec.param_count() >= 16_384;
            }
        }
        results.push(json!({
            "shape": name,
            "params": spec.param_count(),
            "batch_size": batch,
            "plain_samples_per_sec": 1.0 / plain_best,
            "dpsgd_samples_per_sec": 1.0 / dp_best,
            "dpsgd_over_plain_time": dp_best / plain_best,
            "noise_time_over_dpsgd_time": noise_share,
            "noise_drawn_beside_gradient": overlapped,
            "plain_rows": plain_rows,
            "dpsgd_rows": dp_rows,
        }));
    }
    outln!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "benchmark": "dpsgd",
            "method": "book-keeping per-sample clipping (one backward pass), Poisson sampling, CSPRNG Gaussian noise; fastest of the repeats",
            "threads": "burn flex default",
            "results": results,
        }))?
    );
    Ok(0)
}

async fn paillier(b: PaillierBench) -> Result<i32> {
    let sk = match &b.key {
        Some(k) => crate::load_secret_key(k)?,
        None => {
            let json: SecretKeyJson = serde_json::from_str(include_str!(
                "../../crypto/testdata/paillier-2048-TEST-ONLY.json"
            ))?;
            SecretKey::from_json(&json, false)?
        }
    };
    let pk = sk.public_key().clone();
    let mut rng = ChaCha20Rng::from_entropy();
    let n = b.ops.max(1);
    let fp = FixedPoint::new(24, 4.0)?;
    let layout = PackingLayout::new(&fp, 2, pk.modulus_bits())?;
    let pts: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            // A full plaintext: every slot used.
            layout
                .pack(&vec![
                    fp.encode(i as f32 / n as f32);
                    layout.slots_per_plaintext
                ])
                .map(|mut p| p.remove(0))
        })
        .collect::<Result<_, _>>()?;

    // Ciphertext operations at 2048 bits; textbook encryption is the baseline for DJN.
    let (std_cts, std_s) = time(|| {
        pts.iter()
            .map(|p| pk.encrypt_standard(p, &mut rng))
            .collect::<Result<Vec<_>, _>>()
    });
    std_cts?;
    let (cts, enc_s) = time(|| {
        pts.iter()
            .map(|p| pk.encrypt(p, &mut rng))
            .collect::<Result<Vec<_>, _>>()
    });
    let cts = cts?;
    let (rands, offline_s) = time(|| {
        (0..n)
            .map(|_| pk.randomizer(&mut rng))
            .collect::<Result<Vec<_>, _>>()
    });
    let rands = rands?;
    let (online, online_s) = time(|| {
        pts.iter()
            .zip(&rands)
            .map(|(p, r)| pk.encrypt_with_randomizer(p, r))
            .collect::<Result<Vec<_>, _>>()
    });
    online?;
    let (dec, dec_s) = time(|| {
        cts.iter()
            .map(|c| sk.decrypt(c))
            .collect::<Result<Vec<_>, _>>()
    });
    dec?;
    let adds = n * 20;
    let (sum, add_s) = time(|| {
        let mut acc = cts[0].clone();
        for i in 0..adds {
            acc = pk.add(&acc, &cts[i % cts.len()])?;
        }
        Ok::<_, confide_crypto::PaillierError>(acc)
    });
    sum?;

    // Packed throughput on a whole update, counting packing, encryption and framing.
    let params = SchemeParams {
        fixed: fp,
        len: b.weights,
        owners: 2,
        min_owners: 2,
    };
    let update: Vec<i64> = (0..b.weights)
        .map(|i| fp.encode(((i % 97) as f32 - 48.0) / 50.0))
        .collect();
    let mut client = PaillierClient::new(pk.clone(), &params, rand::random())?;
    let (payload, packed_s) = time(|| client.start(&update));
    let payload = payload?;
    let (plain_payload, plain_s) = time(|| PlainClient.start(&update));
    let plain_payload = plain_payload?;

    // breast_homo rounds, in-process over gRPC + mTLS, under `plain` and `paillier`.
    let mut rounds = serde_json::Map::new();
    for scheme in [SchemeArg::Plain, SchemeArg::Paillier] {
        let dir = tempfile::tempdir()?;
        let key_file = dir.path().join("key.json");
        std::fs::write(&key_file, serde_json::to_string(&sk.to_json("bench"))?)?;
        let args = SimulateArgs {
            config: b.config.clone(),
            report: None,
            mode: Some(ModeArg::InProcess),
            work_dir: Some(dir.path().join("run")),
            seed: None,
            scheme: Some(scheme),
            rounds: Some(b.rounds),
            paillier_key: Some(key_file),
            quiet: true,
            crash: Vec::new(),
            faulty_aggregator: Vec::new(),
            revoke_after: None,
            code: Default::default(),
        };
        let out = simulate(&args).await.context("round benchmark")?;
        let history = out.report["history"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let secs: Vec<f64> = history
            .iter()
            .filter_map(|r| r["seconds"].as_f64())
            .collect();
        // The first round includes connection setup; report it separately.
        let steady: Vec<f64> = secs.iter().skip(1).copied().collect();
        let mean = |v: &[f64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let name = if scheme == SchemeArg::Plain {
            "plain"
        } else {
            "paillier"
        };
        rounds.insert(
            name.into(),
            json!({
                "rounds": secs.len(),
                "first_round_ms": secs.first().map(|s| s * 1e3),
                "mean_round_ms": mean(&steady) * 1e3,
                "min_round_ms": steady.iter().copied().fold(f64::INFINITY, f64::min) * 1e3,
                "test_accuracy": out.report["test_accuracy"],
            }),
        );
    }
    let round_ratio = rounds["paillier"]["mean_round_ms"].as_f64().unwrap_or(0.0)
        / rounds["plain"]["mean_round_ms"]
            .as_f64()
            .unwrap_or(1.0)
            .max(1e-9);

    let report = json!({
        "benchmark": "paillier",
        "bigint_backend": confide_crypto::bigint_backend(),
        "modulus_bits": pk.modulus_bits(),
        "threads": 1,
        "ops": n,
        "encrypt_per_sec": per_sec(n, enc_s),
        "encrypt_textbook_per_sec": per_sec(n, std_s),
        "djn_speedup_over_textbook": std_s / enc_s.max(1e-12),
        "encrypt_offline_randomizer_per_sec": per_sec(n, offline_s),
        "encrypt_online_per_sec": per_sec(n, online_s),
        "decrypt_per_sec": per_sec(n, dec_s),
        "add_per_sec": per_sec(adds, add_s),
        "packing": {
            "scale_bits": fp.scale_bits,
            "clip": fp.clip,
            "owners": 2,
            "slot_bits": layout.slot_bits,
            "slots_per_ciphertext": layout.slots_per_plaintext,
        },
        "packed": {
            "weights": b.weights,
            "ciphertexts": layout.plaintexts_for(b.weights),
            "seconds": packed_s,
            "weights_per_sec": per_sec(b.weights, packed_s),
            "upload_bytes": payload.len(),
        },
        "plain": {
            "weights_per_sec": per_sec(b.weights, plain_s),
            "upload_bytes": plain_payload.len(),
        },
        "packed_vs_plain_slowdown": packed_s / plain_s.max(1e-12),
        "breast_homo_round": rounds,
        "round_time_ratio_paillier_over_plain": round_ratio,
    });
    outln!("{}", serde_json::to_string_pretty(&report)?);
    Ok(0)
}
