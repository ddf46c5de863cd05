//! Prints the KvCluster CRD as YAML: `cargo run -p kvd-operator --bin crdgen > crds/kvcluster.yaml`.

fn main() -> std::process::ExitCode {
    match kvd_operator::crd::crd_yaml() {
        Ok(y) => {
            print!("{y}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crdgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
