//! The open-file limit. A node holds one descriptor per agent, and the soft limit most
//! systems start a service with (1,024) would stop it accepting long before its memory or
//! its hard limit would; so tether raises its soft limit to the hard one at start. Programs
//! it starts get the soft limit tether was given back ([`original_soft`]): some still use
//! `select(2)`, which breaks on descriptors past 1,023.

use std::sync::OnceLock;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

static ORIGINAL_SOFT: OnceLock<u64> = OnceLock::new();

/// What [`raise`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    pub from: u64,
    pub to: u64,
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit. `Ok(None)` when it already was.
pub fn raise() -> Result<Option<Raised>, nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let _ = ORIGINAL_SOFT.set(soft);
    if soft >= hard {
        return Ok(None);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(Some(Raised {
        from: soft,
        to: hard,
    }))
}

/// The soft limit before [`raise`], for the programs tether starts; `None` if it never ran.
pub fn original_soft() -> Option<u64> {
    ORIGINAL_SOFT.get().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_the_soft_limit_to_the_hard_one() {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        let raised = raise().expect("raise");
        let (now, hard_now) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!(now, hard);
        assert_eq!(hard_now, hard);
        assert_eq!(original_soft(), Some(soft));
        match raised {
            Some(r) => assert_eq!(
                r,
                Raised {
                    from: soft,
                    to: hard
                }
            ),
            None => assert_eq!(soft, hard),
        }
        // Again: nothing left to raise.
        assert_eq!(raise().expect("raise"), None);
    }
}
