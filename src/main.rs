fn main() {
    std::process::exit(tender::cli::main());
}
