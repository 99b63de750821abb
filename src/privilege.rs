//! Who the supervisor and its workers run as: user and group lookup, the drop from root, and
//! the check that the drop took.
//!
//! Order matters: sockets are bound as root, then [`drop_to`] switches the whole process to the
//! target user (supplementary groups cleared, then gid, then uid) before any worker exists, so
//! nothing that reads network input ever runs as root.

use std::path::Path;

use nix::errno::Errno;
use nix::unistd::{self, AccessFlags, Gid, Group, Uid, User};

use crate::error::{Error, Result};

/// The identity to switch to.
#[derive(Debug, Clone)]
pub struct Target {
    pub uid: Uid,
    pub gid: Gid,
    pub user: String,
    pub group: String,
    pub home: std::path::PathBuf,
}

/// Decides the target identity. `None`: stay as we are (not root and no other user asked for,
/// or root asked to stay root).
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Target>> {
    let euid = Uid::effective();
    let is_root = euid.is_root();
    if !is_root && user.is_none() && group.is_none() {
        return Ok(None);
    }
    let user_name = user.unwrap_or("nobody");
    let u = lookup_user(user_name)?;
    let (gid, group_name) = match group {
        Some(g) => {
            let g = lookup_group(g)?;
            (g.gid, g.name)
        }
        None => {
            let name = Group::from_gid(u.gid)
                .ok()
                .flatten()
                .map_or_else(|| u.gid.to_string(), |g| g.name);
            (u.gid, name)
        }
    };
    if !is_root {
        if u.uid != euid {
            return Err(Error::privilege(format!(
                "--user {user_name}: multinode runs as uid {euid} and cannot switch users; start it as root (sudo) or leave out --user"
            )));
        }
        if gid != Gid::effective() {
            return Err(Error::privilege(format!(
                "--group {}: multinode runs as gid {} and cannot switch groups; start it as root (sudo) or leave out --group",
                group.unwrap_or(&group_name),
                Gid::effective()
            )));
        }
        return Ok(None);
    }
    if u.uid.is_root() {
        // Root stays root: no drop happens, so a group can only be the one we have already.
        return match group {
            Some(g) if gid != Gid::effective() => Err(Error::privilege(format!(
                "--group {g} with --user {user_name}: multinode stays root then and changes no \
                 group; leave out --group, or give --user a user other than root"
            ))),
            _ => Ok(None),
        };
    }
    Ok(Some(Target {
        uid: u.uid,
        gid,
        user: u.name,
        group: group_name,
        home: u.dir,
    }))
}

fn lookup_user(name: &str) -> Result<User> {
    let found = User::from_name(name).map_err(|e| {
        Error::privilege(format!("--user {name}: cannot read the user database: {e}"))
    })?;
    if let Some(u) = found {
        return Ok(u);
    }
    if let Ok(n) = name.parse::<u32>() {
        if let Ok(Some(u)) = User::from_uid(Uid::from_raw(n)) {
            return Ok(u);
        }
    }
    Err(Error::privilege(format!(
        "--user {name}: no such user; give an existing user name (see getent passwd)"
    )))
}

fn lookup_group(name: &str) -> Result<Group> {
    let found = Group::from_name(name).map_err(|e| {
        Error::privilege(format!(
            "--group {name}: cannot read the group database: {e}"
        ))
    })?;
    if let Some(g) = found {
        return Ok(g);
    }
    if let Ok(n) = name.parse::<u32>() {
        if let Ok(Some(g)) = Group::from_gid(Gid::from_raw(n)) {
            return Ok(g);
        }
    }
    Err(Error::privilege(format!(
        "--group {name}: no such group; give an existing group name (see getent group)"
    )))
}

/// Checks, before anything is bound, that `target` will be able to execute `program`: as root
/// everything is executable, but `nobody` may not even reach a program under /root.
///
/// Switches the effective ids for the one `faccessat(AT_EACCESS)` call and back; the process
/// is still single-threaded here.
pub fn check_executable_as(target: &Target, program: &Path) -> Result<()> {
    let groups = unistd::getgroups().map_err(|e| Error::sys("getgroups", e))?;
    let restore = |groups: &[Gid]| -> Result<()> {
        unistd::seteuid(Uid::from_raw(0)).map_err(|e| Error::sys("seteuid(0)", e))?;
        unistd::setegid(Gid::from_raw(0)).map_err(|e| Error::sys("setegid(0)", e))?;
        unistd::setgroups(groups).map_err(|e| Error::sys("setgroups", e))
    };
    unistd::setgroups(&[]).map_err(|e| Error::sys("setgroups", e))?;
    unistd::setegid(target.gid).map_err(|e| Error::sys("setegid", e))?;
    unistd::seteuid(target.uid).map_err(|e| Error::sys("seteuid", e))?;
    let access = unistd::faccessat(
        nix::fcntl::AT_FDCWD,
        program,
        AccessFlags::X_OK,
        nix::fcntl::AtFlags::AT_EACCESS,
    );
    restore(&groups)?;
    access.map_err(|e| {
        let what = format!(
            "program {} cannot be executed by user {} ({})",
            program.display(),
            target.user,
            e.desc().to_lowercase()
        );
        match version_manager(program) {
            Some(manager) => Error::program(format!(
                "{what}: it is a {manager} shim in a home directory; give the system's interpreter instead (e.g. /usr/bin/{}), or install one where {} can reach it",
                program.file_name().map_or("python3".into(), |n| n.to_string_lossy()),
                target.user
            )),
            None => Error::program(format!(
                "{what}; move it where {} can reach it, or choose another --user",
                target.user
            )),
        }
    })
}

/// The version manager whose shim or install `program` is (pyenv, nvm, ...), if any: they live
/// under a home directory the workers' user usually cannot enter.
pub fn version_manager(program: &Path) -> Option<&'static str> {
    let text = program.to_string_lossy();
    [
        ("/.pyenv/", "pyenv"),
        ("/.nvm/", "nvm"),
        ("/.asdf/", "asdf"),
        ("/.rbenv/", "rbenv"),
        ("/.volta/", "Volta"),
        ("/.nodenv/", "nodenv"),
        ("/.local/share/fnm/", "fnm"),
        ("/.local/share/mise/", "mise"),
    ]
    .into_iter()
    .find(|(part, _)| text.contains(part))
    .map(|(_, name)| name)
}

/// Drops the whole process to `target` for good and proves it: afterwards regaining uid 0 must
/// fail, and the real, effective and saved ids must all be the target's.
pub fn drop_to(target: &Target) -> Result<()> {
    let fail = |what: &str, e: Errno| {
        Error::privilege(format!(
            "cannot drop privileges to {}:{}: {what}: {}",
            target.user,
            target.group,
            e.desc()
        ))
    };
    unistd::setgroups(&[]).map_err(|e| fail("setgroups", e))?;
    unistd::setgid(target.gid).map_err(|e| fail("setgid", e))?;
    unistd::setuid(target.uid).map_err(|e| fail("setuid", e))?;
    verify(target)
}

/// Empties the capability bounding set, so that nothing multinode or its workers exec can gain a
/// capability again — a setuid-root program or a file with capabilities included. Needs
/// CAP_SETPCAP: call as root, before [`drop_to`]. Without root there is nothing to gain that
/// [`no_new_privileges`] does not already block, and this does nothing.
pub fn clear_bounding_set() -> Result<()> {
    if !Uid::effective().is_root() {
        return Ok(());
    }
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r != 0 {
            match Errno::last() {
                // Past the last capability this kernel knows.
                Errno::EINVAL => break,
                e => return Err(Error::sys("emptying the capability bounding set", e)),
            }
        }
    }
    Ok(())
}

/// PR_SET_NO_NEW_PRIVS: no exec by this process or any child gains privileges (setuid bits and
/// file capabilities are ignored). Inherited by every worker.
pub fn no_new_privileges() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        return Err(Error::sys("setting no_new_privs", Errno::last()));
    }
    Ok(())
}

/// PR_SET_DUMPABLE 0: processes of the same user (the workers) can neither ptrace the
/// supervisor nor open its memory or its file descriptors through /proc, which then belong to
/// root. After a drop from root the kernel usually does this already (`fs.suid_dumpable` 0);
/// this makes it so whatever that setting is.
pub fn not_dumpable() -> Result<()> {
    nix::sys::prctl::set_dumpable(false).map_err(|e| Error::sys("PR_SET_DUMPABLE", e))
}

fn verify(target: &Target) -> Result<()> {
    let bad = |what: &str| {
        Error::privilege(format!(
            "privilege drop to {}:{} did not take ({what}); refusing to run workers",
            target.user, target.group
        ))
    };
    if unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(bad("uid 0 could be regained"));
    }
    let r = unistd::getresuid().map_err(|e| Error::sys("getresuid", e))?;
    let g = unistd::getresgid().map_err(|e| Error::sys("getresgid", e))?;
    if [r.real, r.effective, r.saved] != [target.uid; 3] {
        return Err(bad("uids differ from the target"));
    }
    if [g.real, g.effective, g.saved] != [target.gid; 3] {
        return Err(bad("gids differ from the target"));
    }
    if !unistd::getgroups()
        .map_err(|e| Error::sys("getgroups", e))?
        .is_empty()
    {
        return Err(bad("supplementary groups remain"));
    }
    Ok(())
}
