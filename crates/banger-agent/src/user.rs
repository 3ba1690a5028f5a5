//! Who a command runs as: a user named by name or uid, looked up in the
//! guest's `/etc/passwd` and `/etc/group` (read directly: a static binary
//! has no NSS, and a tiny guest has no files at all, where root is assumed).

use std::fs;

/// A user to run as, with what its login would set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Supplementary groups: those listing the user, and its primary group.
    pub(crate) groups: Vec<u32>,
    pub(crate) home: String,
    pub(crate) shell: String,
}

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
    shell: &'a str,
}

fn parse_passwd_line(line: &str) -> Option<PasswdEntry<'_>> {
    let fields: Vec<&str> = line.split(':').collect();
    let [name, _password, uid, gid, _gecos, home, shell, ..] = fields[..] else {
        return None;
    };
    Some(PasswdEntry { name, uid: uid.parse().ok()?, gid: gid.parse().ok()?, home, shell })
}

/// The gids of the groups in `/etc/group` text that list `user` as a member.
fn groups_listing(group: &str, user: &str) -> Vec<u32> {
    group
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let [_name, _password, gid, members, ..] = fields[..] else {
                return None;
            };
            members.split(',').any(|m| m.trim() == user).then(|| gid.parse().ok()).flatten()
        })
        .collect()
}

/// Finds `spec` (a name, or a uid when it is all digits; `None` for
/// `current_uid`) in the text of `/etc/passwd` and `/etc/group`. A uid
/// missing from the files is still a user (its group is the same number,
/// its home `/`), and so is root.
fn lookup(passwd: &str, group: &str, spec: Option<&str>, current_uid: u32) -> Result<Account, String> {
    let uid = match spec {
        None => Some(current_uid),
        Some(spec) if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) => {
            Some(spec.parse::<u32>().map_err(|_| format!("the uid {spec} is out of range"))?)
        }
        Some(_) => None,
    };
    let entry = passwd.lines().filter_map(parse_passwd_line).find(|e| match (uid, spec) {
        (Some(uid), _) => e.uid == uid,
        (None, Some(name)) => e.name == name,
        (None, None) => false,
    });
    let Some(entry) = entry else {
        return match uid {
            Some(0) => Ok(Account::fallback("root", 0, "/root")),
            Some(uid) => Ok(Account::fallback(&uid.to_string(), uid, "/")),
            None => Err(format!("there is no user {} in the guest's /etc/passwd", spec.unwrap_or_default())),
        };
    };
    let mut groups = groups_listing(group, entry.name);
    groups.push(entry.gid);
    groups.sort_unstable();
    groups.dedup();
    let shell = if entry.shell.is_empty() { "/bin/sh" } else { entry.shell };
    Ok(Account {
        name: entry.name.to_string(),
        uid: entry.uid,
        gid: entry.gid,
        groups,
        home: entry.home.to_string(),
        shell: shell.to_string(),
    })
}

impl Account {
    fn fallback(name: &str, uid: u32, home: &str) -> Account {
        Account {
            name: name.to_string(),
            uid,
            gid: uid,
            groups: vec![uid],
            home: home.to_string(),
            shell: "/bin/sh".to_string(),
        }
    }

    /// The account `spec` names in this guest (`None`: the agent's own).
    pub(crate) fn resolve(spec: Option<&str>) -> Result<Account, String> {
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = fs::read_to_string("/etc/group").unwrap_or_default();
        lookup(&passwd, &group, spec, rustix::process::geteuid().as_raw())
    }

    /// Whether running as this account needs a change of identity.
    pub(crate) fn differs_from_ours(&self) -> bool {
        self.uid != rustix::process::geteuid().as_raw() || self.gid != rustix::process::getegid().as_raw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        broken line\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        dev:x:1000:1000:Dev,,,:/home/dev:\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:dev\nusers:x:100:nobody,dev\ndocker:x:999:other\ndev:x:1000:\n";

    #[test]
    fn users_are_found_by_name_or_uid() {
        let dev = lookup(PASSWD, GROUP, Some("dev"), 0).unwrap();
        assert_eq!(
            dev,
            Account {
                name: "dev".into(),
                uid: 1000,
                gid: 1000,
                groups: vec![27, 100, 1000],
                home: "/home/dev".into(),
                shell: "/bin/sh".into(),
            }
        );
        assert_eq!(lookup(PASSWD, GROUP, Some("1000"), 0).unwrap(), dev);
        let nobody = lookup(PASSWD, GROUP, Some("nobody"), 0).unwrap();
        assert_eq!((nobody.uid, nobody.gid, nobody.groups), (65534, 65534, vec![100, 65534]));
        assert_eq!(lookup(PASSWD, GROUP, None, 0).unwrap().home, "/root");
    }

    #[test]
    fn unknown_names_are_refused_and_bare_uids_accepted() {
        let error = lookup(PASSWD, GROUP, Some("mallory"), 0).unwrap_err();
        assert!(error.contains("no user mallory"), "{error}");
        let bare = lookup(PASSWD, GROUP, Some("4242"), 0).unwrap();
        assert_eq!((bare.uid, bare.gid, bare.home.as_str()), (4242, 4242, "/"));
        assert!(lookup(PASSWD, GROUP, Some("99999999999"), 0).is_err());
        // A tiny guest without /etc/passwd still has root.
        let root = lookup("", "", None, 0).unwrap();
        assert_eq!((root.name.as_str(), root.uid, root.home.as_str()), ("root", 0, "/root"));
    }
}
