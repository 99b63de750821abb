//! Prints the options `serve_args` picks from, one per line, in the order its first byte picks
//! them: `fuzz/seeds.py` writes a seed for each (bench/fuzz.sh runs both).

fn main() {
    for option in multinode_fuzz::targets::serve_args::options() {
        println!("{option}");
    }
}
