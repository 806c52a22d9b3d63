//! Generates the committed TEST-ONLY Paillier key (`testdata/paillier-2048-TEST-ONLY.json`).
//! Run: `cargo run --release -p confide-crypto --example gen_test_key -- <bits> <out.json>`.
use rand::rngs::OsRng;

fn main() {
    let mut args = std::env::args().skip(1);
    let bits: u32 = args.next().and_then(|b| b.parse().ok()).unwrap_or(2048);
    let out = args
        .next()
        .unwrap_or_else(|| "paillier-TEST-ONLY.json".into());
    let start = std::time::Instant::now();
    let sk = match confide_crypto::SecretKey::generate(bits, &mut OsRng) {
        Ok(sk) => sk,
        Err(e) => {
            eprintln!("keygen failed: {e}");
            std::process::exit(1);
        }
    };
    let json = sk
        .to_json("TEST ONLY: committed to the repository for fast tests; never use for real data");
    let text = serde_json::to_string_pretty(&json).unwrap_or_default();
    if let Err(e) = std::fs::write(&out, text) {
        eprintln!("cannot write {out}: {e}");
        std::process::exit(1);
    }
    eprintln!(
        "{bits}-bit key written to {out} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}
