//! The `hablar-server` binary.

fn main() {
    println!("hablar-server: coming soon");
}
