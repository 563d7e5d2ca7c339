//! Running the companion as the container's user.
//!
//! `prepare()` (in the agent, as root) resolves `ContainerConfig.user` to a
//! uid/gid and records it in `meta.json`; the companion drops to it before it
//! opens anything in the sandbox or the spool, as Mesos' own logrotate
//! companion does. A user unknown on the agent host keeps the companion as
//! the agent's user, with a warning (and a notice record): losing the logs
//! would be worse.

use serde_json::{json, Value};
use std::ffi::{CStr, CString};

/// Who the companion runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    pub fn to_json(&self) -> Value {
        json!({"user": self.user, "uid": self.uid, "gid": self.gid})
    }

    pub fn from_json(v: &Value) -> Option<RunAs> {
        Some(RunAs {
            user: v.get("user")?.as_str()?.to_string(),
            uid: u32::try_from(v.get("uid")?.as_u64()?).ok()?,
            gid: u32::try_from(v.get("gid")?.as_u64()?).ok()?,
        })
    }
}

/// Looks a user up in the agent host's user database.
pub fn lookup(user: &str) -> Result<RunAs, String> {
    let name = CString::new(user).map_err(|_| format!("user `{user}` contains a NUL byte"))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives the use of pwd.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(format!("user `{user}` does not exist on this host"));
    }
    // SAFETY: getpwnam_r filled pw_name with a NUL-terminated string in buf.
    let resolved = unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned();
    Ok(RunAs {
        user: resolved,
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

/// Drops this process to `r` for good: supplementary groups, gid, uid.
pub fn drop_to(r: &RunAs) -> Result<(), String> {
    let name = CString::new(r.user.clone()).map_err(|_| "bad user name".to_string())?;
    // SAFETY: plain syscalls with valid arguments.
    unsafe {
        if libc::initgroups(name.as_ptr(), r.gid) != 0 {
            return Err(format!(
                "initgroups({}): {}",
                r.user,
                std::io::Error::last_os_error()
            ));
        }
        if libc::setgid(r.gid) != 0 {
            return Err(format!(
                "setgid({}): {}",
                r.gid,
                std::io::Error::last_os_error()
            ));
        }
        if libc::setuid(r.uid) != 0 {
            return Err(format!(
                "setuid({}): {}",
                r.uid,
                std::io::Error::last_os_error()
            ));
        }
        if r.uid != 0 && libc::setuid(0) == 0 {
            return Err("could regain root after setuid".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_known_and_unknown_users() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(lookup("no-such-user-mesos-gelf")
            .unwrap_err()
            .contains("does not exist"));
        assert_eq!(RunAs::from_json(&root.to_json()), Some(root));
    }
}
