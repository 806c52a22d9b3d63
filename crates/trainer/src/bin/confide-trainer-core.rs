//! The trusted core as a minimal binary: this crate and what it links (core, ml, crypto,
//! attest), no network stack and no CLI. Its host starts it with `--dir DIR` and speaks the
//! typed channel on its stdin and stdout (see `confide_trainer::entry`).
//!
//! Usage: `confide-trainer-core --dir DIR`

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [flag, dir] if flag == "--dir" => std::path::PathBuf::from(dir),
        _ => {
            eprintln!(
                "usage: confide-trainer-core --dir DIR (started by `confide trainer` or `confide simulate`)"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = confide_trainer::entry::run(&dir) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
