//! `/etc/passwd` and `/etc/group` of the container, parsed by hand: the agent is a static binary
//! and must not go through glibc's NSS (which would read the *guest's* databases anyway).

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Parses `/etc/passwd` content; malformed lines and comments are skipped.
pub fn parse_passwd(content: &str) -> Vec<Passwd> {
    content
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 7 {
                return None;
            }
            Some(Passwd {
                name: fields[0].to_string(),
                uid: fields[2].trim().parse().ok()?,
                gid: fields[3].trim().parse().ok()?,
                home: fields[5].to_string(),
                shell: fields[6].to_string(),
            })
        })
        .collect()
}

/// Parses `/etc/group` content; malformed lines and comments are skipped.
pub fn parse_group(content: &str) -> Vec<Group> {
    content
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 {
                return None;
            }
            Some(Group {
                name: fields[0].to_string(),
                gid: fields[2].trim().parse().ok()?,
                members: fields[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|member| !member.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// The passwd entry of a uid (the first one, as getpwuid).
pub fn find_by_uid(entries: &[Passwd], uid: u32) -> Option<&Passwd> {
    entries.iter().find(|entry| entry.uid == uid)
}

/// The passwd entry of a user name.
pub fn find_by_name<'a>(entries: &'a [Passwd], name: &str) -> Option<&'a Passwd> {
    entries.iter().find(|entry| entry.name == name)
}

/// The gids of the groups that list `user` as a member (its supplementary groups).
pub fn supplementary_gids(groups: &[Group], user: &str) -> Vec<u32> {
    groups
        .iter()
        .filter(|group| group.members.iter().any(|member| member == user))
        .map(|group| group.gid)
        .collect()
}

/// HOME for a uid: its passwd home directory, `/` when it has none.
pub fn home_for_uid(passwd_content: Option<&str>, uid: u32) -> String {
    passwd_content
        .map(parse_passwd)
        .and_then(|entries| find_by_uid(&entries, uid).map(|entry| entry.home.clone()))
        .filter(|home| !home.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
broken line
alice:x:1000:1000:Alice,,,:/home/alice:/bin/sh
bad:x:notanumber:1:::
";

    const GROUP: &str = "\
root:x:0:
wheel:x:10:alice,root
users:x:100: alice , bob
alice:x:1000:
";

    #[test]
    fn passwd_lines() {
        let entries = parse_passwd(PASSWD);
        assert_eq!(entries.len(), 3);
        let alice = find_by_uid(&entries, 1000).unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.gid, 1000);
        assert_eq!(alice.home, "/home/alice");
        assert_eq!(alice.shell, "/bin/sh");
        assert_eq!(find_by_name(&entries, "daemon").map(|e| e.uid), Some(1));
        assert!(find_by_uid(&entries, 4242).is_none());
    }

    #[test]
    fn group_lines() {
        let groups = parse_group(GROUP);
        assert_eq!(groups.len(), 4);
        assert_eq!(supplementary_gids(&groups, "alice"), vec![10, 100]);
        assert_eq!(supplementary_gids(&groups, "bob"), vec![100]);
        assert!(supplementary_gids(&groups, "carol").is_empty());
    }

    #[test]
    fn home_defaults_to_root_dir() {
        assert_eq!(home_for_uid(Some(PASSWD), 1000), "/home/alice");
        assert_eq!(home_for_uid(Some(PASSWD), 0), "/root");
        assert_eq!(home_for_uid(Some(PASSWD), 4242), "/");
        assert_eq!(home_for_uid(None, 0), "/");
    }
}
