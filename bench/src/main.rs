//! `hablar-bench`: the load generator (work in progress).

fn main() {
    println!("hablar-bench: not yet");
}
