//! The only module that talks to the kernel: encodes a transaction as one nftnl batch,
//! sends it with one `sendmsg`, and reads our tables back.
//!
//! Every call into C (libnftnl, libc) is in [`ffi`], behind owned handles and checked
//! setters; the other modules are safe Rust (`forbid(unsafe_code)`, and a test in
//! `ffi.rs` scans the sources).

pub mod attr;
pub mod consts;
pub mod encode;
pub mod expr;
pub mod ffi;
pub mod monitor;
pub mod readback;
pub mod rules;
pub mod socket;

use std::io;

use crate::ruleset::diff::Op;
use crate::ruleset::ir::Family;

pub use encode::{encode, Batch};
pub use readback::{to_known, RawTable};
pub use socket::Conn;

/// Errors of the netlink layer, each named for the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening the netfilter netlink socket failed.
    #[error("cannot open a netfilter netlink socket")]
    Open(#[source] io::Error),
    /// Sending to the kernel failed.
    #[error("sending to the kernel failed")]
    Send(#[source] io::Error),
    /// Receiving from the kernel failed (or timed out).
    #[error("receiving from the kernel failed")]
    Recv(#[source] io::Error),
    /// An operation could not be encoded into a message (nothing was sent).
    #[error("cannot encode the operation: {op}")]
    Encode {
        /// the operation
        op: String,
        /// why
        #[source]
        source: ffi::EncodeError,
    },
    /// The kernel refused a message.
    #[error("the kernel refused message {seq} ({}){}{}", io::Error::from_raw_os_error(*errno), text.as_ref().map(|t| format!(": {t}")).unwrap_or_default(), op.as_ref().map(|o| format!(" in operation: {o}")).unwrap_or_default())]
    Rejected {
        /// errno
        errno: i32,
        /// sequence number of the refused message
        seq: u32,
        /// the kernel's extended ACK text, if any
        text: Option<String>,
        /// the operation that produced the message
        op: Option<String>,
    },
}

impl Error {
    /// The errno the kernel answered with, if it refused a message.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Rejected { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// A handle on the kernel's nftables.
pub struct Kernel {
    conn: Conn,
}

/// An operation as the errors name it.
fn describe(op: &Op) -> String {
    match op {
        Op::AddTable(f) => format!("add table {}", f.nft()),
        Op::DelTable(f) => format!("delete table {}", f.nft()),
        Op::DelForeignTable(f, n) => format!("delete table {} {n}", f.nft()),
        Op::FlushChain(f, c) => format!("flush chain {} {c}", f.nft()),
        Op::DelChain(f, c) => format!("delete chain {} {c}", f.nft()),
        Op::DelSet(f, s) => format!("delete set {} {s}", f.nft()),
        Op::AddSet(f, d) => format!("add set {} {}", f.nft(), d.name),
        Op::AddChain(f, c) => format!("add chain {} {}", f.nft(), c.name),
        Op::DelElements(f, d, k) => {
            format!("delete {} elements from {} {}", k.len(), f.nft(), d.name)
        }
        Op::AddElements(f, d, k) => format!("add {} elements to {} {}", k.len(), f.nft(), d.name),
        Op::AddRule(f, c, r) => format!(
            "add rule {} {c} {}",
            f.nft(),
            crate::ruleset::render::rule(r, *f)
        ),
    }
}

impl Kernel {
    /// Opens a socket in the current network namespace.
    pub fn open() -> Result<Kernel, Error> {
        Ok(Kernel {
            conn: Conn::open()?,
        })
    }

    /// The socket, for requests with no method here: the takeover's dumps and
    /// deletions in tables that are not ours (`migrate::iptables_nft`).
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// The names of every table of one family (ours and others').
    pub fn table_names(&mut self, family: Family) -> Result<Vec<String>, Error> {
        readback::table_names(&mut self.conn, family)
    }

    /// Reads our table of one family back (None: it does not exist).
    pub fn read(&mut self, family: Family) -> Result<Option<RawTable>, Error> {
        readback::read_table(&mut self.conn, family)
    }

    /// Our table of one family without set elements (None: it does not exist).
    pub fn read_structure(&mut self, family: Family) -> Result<Option<RawTable>, Error> {
        readback::read_structure(&mut self.conn, family)
    }

    /// Our table of one family as IR, every rule decoded (None: it does not exist).
    pub fn read_ir(&mut self, family: Family) -> Result<Option<rules::ReadBack>, Error> {
        rules::read_ir(&mut self.conn, family)
    }

    /// The nftables generation id (moves by one per committed transaction).
    pub fn generation(&mut self) -> Result<u32, Error> {
        readback::generation(&mut self.conn)
    }

    /// The declarations of the sets of our table of one family, without elements (none
    /// when the table does not exist).
    pub fn set_decls(&mut self, family: Family) -> Result<Vec<readback::RawSet>, Error> {
        if !self
            .table_names(family)?
            .iter()
            .any(|n| n == crate::ruleset::ir::TABLE_NAME)
        {
            return Ok(Vec::new());
        }
        readback::set_decls(&mut self.conn, family)
    }

    /// Every element of one set of our table as the kernel holds it (with its counter
    /// in a counted set).
    pub fn set_elements(
        &mut self,
        family: Family,
        set: &str,
    ) -> Result<Vec<readback::RawElement>, Error> {
        readback::set_elements(&mut self.conn, family, set)
    }

    /// The keys of every element of one set of our table, decoded as `types`.
    pub fn set_keys(
        &mut self,
        family: Family,
        set: &str,
        types: &[crate::ruleset::ir::KeyType],
    ) -> Result<Vec<crate::ruleset::ir::Key>, Error> {
        let raw = readback::set_elements(&mut self.conn, family, set)?;
        Ok(readback::decode_keys(types, family, &raw))
    }

    /// Commits the operations as one transaction. Nothing is applied on error.
    pub fn apply(&mut self, ops: &[Op]) -> Result<(), Error> {
        if ops.is_empty() {
            return Ok(());
        }
        let batch = encode(ops)?;
        self.commit(&batch, ops)
    }

    /// Asks the kernel whether it would accept the operations as one transaction,
    /// without committing them: the kernel runs every check of the transaction and then
    /// aborts it. Nothing changes either way; the error names the refused operation.
    pub fn check(&mut self, ops: &[Op]) -> Result<(), Error> {
        if ops.is_empty() {
            return Ok(());
        }
        let batch = encode(ops)?.without_end();
        self.commit(&batch, ops)
    }

    /// Commits an already encoded batch (for benchmarks that time the commit alone).
    pub fn commit(&mut self, batch: &Batch, ops: &[Op]) -> Result<(), Error> {
        self.conn.commit(batch).map_err(|e| match e {
            Error::Rejected {
                errno, seq, text, ..
            } => Error::Rejected {
                errno,
                seq,
                text,
                op: if seq == batch.begin_seq {
                    Some("commit".into())
                } else {
                    batch.op_for_seq(seq).and_then(|i| ops.get(i)).map(describe)
                },
            },
            e => e,
        })
    }
}
