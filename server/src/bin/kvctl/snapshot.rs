//! `kvctl snapshot status|restore`: snapshot files saved with `etcdctl
//! snapshot save` from kvd or from etcd (3.4 to 3.6; or an etcd member's
//! `db` file, with --skip-hash-check), new members' data dirs made from
//! them, and kvd's snapshots written as etcd's (`export`).

use clap::Subcommand;

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Verifies a snapshot file and prints its hash, revision, keys and size.
    Status {
        file: std::path::PathBuf,
        /// table or json
        #[arg(short = 'w', long = "write-out", default_value = "table")]
        write_out: String,
        /// Read an etcd db file that has no SHA-256 trailer (one copied
        /// from a data dir), as etcdutl's flag.
        #[arg(long)]
        skip_hash_check: bool,
    },
    /// Writes a kvd snapshot file as an etcd snapshot (a bbolt file with
    /// etcd's buckets and the SHA-256), for `etcdutl snapshot restore`:
    /// the way back from kvd to etcd, keeping keys, revisions, leases,
    /// users and roles.
    Export {
        /// A snapshot saved from kvd (`etcdctl snapshot save`).
        file: std::path::PathBuf,
        /// Where to write the etcd snapshot (replaced if it exists).
        out: std::path::PathBuf,
    },
    /// Creates a new member's data dir from a snapshot file.
    Restore {
        file: std::path::PathBuf,
        #[command(flatten)]
        member: MemberArgs,
        /// Read an etcd db file that has no SHA-256 trailer (one copied
        /// from a data dir), as etcdutl's flag.
        #[arg(long)]
        skip_hash_check: bool,
    },
}

pub fn snapshot_cmd(cmd: SnapshotCmd) -> Result<(), String> {
    match cmd {
        SnapshotCmd::Status { file, write_out, skip_hash_check } => {
            let st = kvd::snapshot::status(&file, skip_hash_check).map_err(|e| e.to_string())?;
            print_status(&st, &write_out);
            Ok(())
        }
        SnapshotCmd::Export { file, out } => {
            let st = kvd::snapshot::export_etcd(&file, &out).map_err(|e| e.to_string())?;
            println!(
                "exported snapshot {} (revision {}, {} keys) as an etcd snapshot {} ({} bytes)",
                file.display(),
                st.revision,
                st.keys,
                out.display(),
                st.size
            );
            Ok(())
        }
        SnapshotCmd::Restore { file, member, skip_hash_check } => {
            let st = restore_member(&file, &member, skip_hash_check)?;
            println!(
                "restored snapshot {} (revision {}, {} keys) into {}",
                file.display(),
                st.revision,
                st.keys,
                member.data_dir().display()
            );
            Ok(())
        }
    }
}

/// A new member: its name, data dir and the cluster it starts in, named
/// as etcdutl's flags.
#[derive(clap::Args, Clone, Debug)]
pub struct MemberArgs {
    #[arg(long, default_value = "default")]
    name: String,
    /// Defaults to `<name>.kvd`.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// `name=peerURL,...` (default: this member alone).
    #[arg(long)]
    initial_cluster: Option<String>,
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    #[arg(long, default_value = "http://127.0.0.1:2380", value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,
}

impl MemberArgs {
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.data_dir.clone().unwrap_or_else(|| std::path::PathBuf::from(format!("{}.kvd", self.name)))
    }
}

/// Creates the data dir of the member `m` describes from snapshot `file`,
/// with the member and cluster ids kvd derives from its flags on a first start.
pub fn restore_member(
    file: &std::path::Path,
    m: &MemberArgs,
    skip_hash_check: bool,
) -> Result<kvd::snapshot::Status, String> {
    let name = &m.name;
    let spec = m.initial_cluster.clone().unwrap_or_else(|| {
        m.initial_advertise_peer_urls.iter().map(|u| format!("{name}={u}")).collect::<Vec<_>>().join(",")
    });
    let cluster = kvd::config::parse_initial_cluster(&spec).map_err(|e| e.to_string())?;
    if !cluster.contains_key(name) {
        return Err(format!("--initial-cluster does not contain this member's name {name:?}"));
    }
    let token = &m.initial_cluster_token;
    let members: std::collections::BTreeMap<u64, kvd::raft::Member> = cluster
        .iter()
        .map(|(n, urls)| {
            let id = kvd::etcdserver::member_id(urls, token);
            (id, kvd::raft::Member { name: n.clone(), peer_urls: urls.clone(), client_urls: Vec::new() })
        })
        .collect();
    let ids: Vec<u64> = members.keys().copied().collect();
    let identity = kvd::wal::Metadata {
        // This member's id from its own --initial-cluster entry, as kvd
        // computes it on a first start.
        node_id: kvd::etcdserver::member_id(&cluster[name], token),
        cluster_id: kvd::etcdserver::cluster_id(&ids, token),
    };
    kvd::snapshot::restore(file, &m.data_dir(), identity, &members, skip_hash_check).map_err(|e| e.to_string())
}

fn print_status(st: &kvd::snapshot::Status, write_out: &str) {
    if write_out == "json" {
        println!("{}", serde_json::to_string(st).unwrap_or_default());
        return;
    }
    let format = match st.format {
        kvd::snapshot::Format::Kvd => "kvd",
        kvd::snapshot::Format::Etcd => "etcd",
    };
    let row = [
        st.hash.clone(),
        st.revision.to_string(),
        st.keys.to_string(),
        st.revisions.to_string(),
        st.size.to_string(),
        format.to_string(),
    ];
    let head = ["HASH", "REVISION", "TOTAL KEYS", "REVISIONS", "TOTAL SIZE", "FORMAT"];
    let w: Vec<usize> = head.iter().zip(&row).map(|(h, r)| h.len().max(r.len())).collect();
    let line = format!("+{}+", w.iter().map(|n| "-".repeat(n + 2)).collect::<Vec<_>>().join("+"));
    let fmt = |cells: &[String]| {
        format!("|{}|", cells.iter().zip(&w).map(|(c, n)| format!(" {c:>n$} ")).collect::<Vec<_>>().join("|"))
    };
    println!("{line}\n{}\n{line}\n{}\n{line}", fmt(&head.map(String::from)), fmt(&row));
}
