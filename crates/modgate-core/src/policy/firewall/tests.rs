use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn at(days: u64) -> SystemTime {
    // 2026-12-01 00:00:00 UTC plus `days`.
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_083_200) + DAY * days as u32
}

fn rule(id: &str, action: Action) -> RuleSpec {
    RuleSpec {
        id: id.into(),
        action,
        mode: Mode::Enforce,
        modules: vec![],
        versions: vec![],
        groups: vec![],
        cooldown: None,
        vulnerable: None,
        retracted: false,
    }
}

fn fw(rules: Vec<RuleSpec>, default: Action) -> Firewall {
    Firewall::new(&FirewallSpec {
        rules,
        groups: vec![
            GroupSpec {
                name: "ci".into(),
                users: vec!["ci-bot".into()],
                clients: vec!["10.1.0.0/16".into()],
            },
            GroupSpec {
                name: "dev".into(),
                users: vec!["alice".into()],
                clients: vec![],
            },
        ],
        default,
    })
    .unwrap()
}

const ANON: Client<'static> = Client {
    user: None,
    addr: None,
};

fn decide(f: &Firewall, m: &str, v: &str, c: &Client<'_>, facts: &Facts) -> (Verdict, String) {
    let d = f.decide(m, v, c, Purpose::Fetch, facts, at(0));
    (d.verdict, d.rule)
}

#[test]
fn version_selectors() {
    let cases: &[(&str, &str, bool)] = &[
        ("v1.2.3", "v1.2.3", true),
        ("v1.2.3", "v1.2.4", false),
        ("=v1.2", "v1.2.0", true),
        ("!=v1.2.3", "v1.2.3", false),
        ("!=v1.2.3", "v1.2.4", true),
        (">=v1.2.0, <v1.4.0", "v1.3.9", true),
        (">=v1.2.0, <v1.4.0", "v1.4.0", false),
        (">=v1.2.0, <v1.4.0", "v1.1.9", false),
        (">=v1.2.0, <v1.4.0", "v1.4.0-rc.1", true),
        ("<=v2", "v2.0.0", true),
        (">v2", "v2.0.0", false),
        (">v2", "v2.0.1", true),
        ("prerelease", "v1.0.0-rc.1", true),
        ("prerelease", "v1.0.0", false),
        ("prerelease", "v0.0.0-20261201000000-abcdefabcdef", false),
        ("pseudo", "v0.0.0-20261201000000-abcdefabcdef", true),
        ("pseudo", "v1.2.4-0.20261201000000-abcdefabcdef", true),
        ("pseudo", "v1.0.0-rc.1", false),
        ("release", "v1.0.0", true),
        ("release", "v2.0.0+incompatible", true),
        ("release", "v1.0.0-rc.1", false),
        ("release, >=v1", "v0.9.0", false),
        ("*", "v0.0.1", true),
    ];
    for (sel, v, want) in cases {
        let s = VersionSelector::parse(sel).unwrap();
        assert_eq!(s.matches(v), *want, "{sel} on {v}");
    }
    for bad in ["", "1.2.3", ">=", "v1,,v2", "latest", ">=v1.2.3.4"] {
        assert!(VersionSelector::parse(bad).is_err(), "{bad:?} parses");
    }
}

#[test]
fn first_enforce_rule_decides_in_order() {
    let mut allow = rule("allow-acme", Action::Allow);
    allow.modules = vec!["example.com/acme".into()];
    let mut deny = rule("deny-example", Action::Deny);
    deny.modules = vec!["example.com".into()];
    let f = fw(vec![allow, deny], Action::Allow);
    let facts = Facts::default();
    assert_eq!(
        decide(&f, "example.com/acme/x", "v1.0.0", &ANON, &facts),
        (Verdict::Allowed, "allow-acme".into())
    );
    assert_eq!(
        decide(&f, "example.com/other", "v1.0.0", &ANON, &facts),
        (Verdict::Refused, "deny-example".into())
    );
    // Prefix patterns match whole elements, as GOPRIVATE does.
    assert_eq!(
        decide(&f, "example.community/x", "v1.0.0", &ANON, &facts),
        (Verdict::Allowed, "default".into())
    );
}

#[test]
fn default_deny_is_an_allow_list() {
    let mut allow = rule("approved", Action::Allow);
    allow.modules = vec!["golang.org/x/*".into()];
    allow.versions = vec![">=v0.10.0".into()];
    let f = fw(vec![allow], Action::Deny);
    let facts = Facts::default();
    assert_eq!(
        decide(&f, "golang.org/x/text", "v0.14.0", &ANON, &facts).0,
        Verdict::Allowed
    );
    let d = f.decide(
        "golang.org/x/text",
        "v0.3.0",
        &ANON,
        Purpose::Fetch,
        &facts,
        at(0),
    );
    assert_eq!(d.verdict, Verdict::Refused);
    assert_eq!(
        d.refusal_text("golang.org/x/text", "v0.3.0"),
        "modgate: golang.org/x/text@v0.3.0 refused by the firewall's default (firewall.default = \"deny\"): no rule allows it"
    );
}

#[test]
fn cooldown_refuses_young_versions_and_names_the_dates() {
    let mut cool = rule("cooldown-7d", Action::Deny);
    cool.cooldown = Some(DAY * 7);
    let f = fw(vec![cool], Action::Allow);
    let young = Facts {
        published: Some(at(0) - DAY),
        ..Facts::default()
    };
    let d = f.decide(
        "example.com/m",
        "v1.4.0",
        &ANON,
        Purpose::Fetch,
        &young,
        at(0),
    );
    assert_eq!(d.verdict, Verdict::Refused);
    assert_eq!(
        d.refusal_text("example.com/m", "v1.4.0"),
        "modgate: example.com/m@v1.4.0 refused by rule cooldown-7d: published 2026-11-30, allowed from 2026-12-07"
    );
    let old = Facts {
        published: Some(at(0) - DAY * 8),
        ..Facts::default()
    };
    assert_eq!(
        decide(&f, "example.com/m", "v1.3.0", &ANON, &old),
        (Verdict::Allowed, "default".into())
    );
    // Unknown time: the cooldown cannot be proven, so it refuses.
    assert_eq!(
        decide(&f, "example.com/m", "v1.3.0", &ANON, &Facts::default()).0,
        Verdict::Refused
    );
    assert!(
        f.needs("example.com/m", "v1.3.0", &ANON, Purpose::Fetch)
            .published
    );
}

#[test]
fn groups_select_by_user_or_address() {
    let mut ci = rule("ci-releases-only", Action::Deny);
    ci.groups = vec!["ci".into()];
    ci.versions = vec!["prerelease".into(), "pseudo".into()];
    let f = fw(vec![ci], Action::Allow);
    let facts = Facts::default();
    let bot = Client {
        user: Some("ci-bot"),
        addr: None,
    };
    let runner = Client {
        user: None,
        addr: Some("10.1.2.3".parse().unwrap()),
    };
    let alice = Client {
        user: Some("alice"),
        addr: Some("10.2.0.1".parse().unwrap()),
    };
    for c in [bot, runner] {
        assert_eq!(
            decide(&f, "example.com/m", "v1.0.0-rc.1", &c, &facts).0,
            Verdict::Refused
        );
        assert_eq!(f.group_of(&c), "ci");
    }
    assert_eq!(
        decide(&f, "example.com/m", "v1.0.0-rc.1", &alice, &facts).0,
        Verdict::Allowed
    );
    assert_eq!(f.group_of(&alice), "dev");
    assert_eq!(f.group_of(&ANON), "everyone");
}

#[test]
fn report_rules_record_and_do_not_decide() {
    let mut report = rule("would-deny", Action::Deny);
    report.mode = Mode::Report;
    report.versions = vec!["v1.0.0".into()];
    let f = fw(vec![report], Action::Allow);
    let d = f.decide(
        "example.com/m",
        "v1.0.0",
        &ANON,
        Purpose::Fetch,
        &Facts::default(),
        at(0),
    );
    assert_eq!(d.verdict, Verdict::Allowed);
    assert_eq!(
        d.reported,
        vec![(
            "would-deny".to_string(),
            "version v1.0.0 is denied".to_string()
        )]
    );
}

#[test]
fn advisories_by_any_or_id_and_alias() {
    let mut any = rule("no-vulns", Action::Deny);
    any.vulnerable = Some(VulnSelector::Any);
    let mut listed = rule("cve-list", Action::Deny);
    listed.vulnerable = Some(VulnSelector::Ids(vec!["CVE-2026-0001".into()]));
    let facts = Facts {
        advisories: vec![Advisory {
            id: "GO-2026-0001".into(),
            aliases: vec!["CVE-2026-0001".into()],
            fixed: Some("v1.2.1".into()),
        }],
        ..Facts::default()
    };
    for f in [
        fw(vec![any], Action::Allow),
        fw(vec![listed], Action::Allow),
    ] {
        let d = f.decide(
            "example.com/m",
            "v1.2.0",
            &ANON,
            Purpose::Fetch,
            &facts,
            at(0),
        );
        assert_eq!(d.verdict, Verdict::Refused);
        assert!(d.why.contains("GO-2026-0001, fixed in v1.2.1"), "{}", d.why);
        assert_eq!(
            decide(&f, "example.com/m", "v1.2.1", &ANON, &Facts::default()).0,
            Verdict::Allowed
        );
    }
    let mut other = rule("other", Action::Deny);
    other.vulnerable = Some(VulnSelector::Ids(vec!["GO-2026-9999".into()]));
    let f = fw(vec![other], Action::Allow);
    assert_eq!(
        decide(&f, "example.com/m", "v1.2.0", &ANON, &facts).0,
        Verdict::Allowed
    );
}

#[test]
fn retraction_applies_only_when_choosing() {
    let mut r = rule("no-retracted", Action::Deny);
    r.retracted = true;
    let f = fw(vec![r], Action::Allow);
    let facts = Facts {
        retracted: true,
        ..Facts::default()
    };
    let choose = f.decide("m.test/a", "v1.0.0", &ANON, Purpose::Choose, &facts, at(0));
    assert_eq!(choose.verdict, Verdict::Refused);
    let fetch = f.decide("m.test/a", "v1.0.0", &ANON, Purpose::Fetch, &facts, at(0));
    assert_eq!(fetch.verdict, Verdict::Allowed);
    assert!(
        !f.needs("m.test/a", "v1.0.0", &ANON, Purpose::Fetch)
            .retracted
    );
    assert!(
        f.needs("m.test/a", "v1.0.0", &ANON, Purpose::Choose)
            .retracted
    );
}

#[test]
fn configuration_errors_name_the_key() {
    let cases: Vec<(RuleSpec, &str)> = vec![
        (rule("", Action::Deny), "firewall.rules[0].id"),
        (rule("default", Action::Deny), "firewall.rules[0].id"),
        (rule("has space", Action::Deny), "firewall.rules[0].id"),
        (
            RuleSpec {
                versions: vec!["latest".into()],
                ..rule("x", Action::Deny)
            },
            "firewall.rules[0].versions[0]",
        ),
        (
            RuleSpec {
                groups: vec!["nobody".into()],
                ..rule("x", Action::Deny)
            },
            "firewall.rules[0].groups[0]",
        ),
        (
            RuleSpec {
                cooldown: Some(DAY),
                ..rule("x", Action::Allow)
            },
            "firewall.rules[0].action",
        ),
        (
            RuleSpec {
                modules: vec!["a,b".into()],
                ..rule("x", Action::Deny)
            },
            "firewall.rules[0].modules[0]",
        ),
        (
            RuleSpec {
                modules: vec!["[".into()],
                ..rule("x", Action::Deny)
            },
            "firewall.rules[0].modules[0]",
        ),
    ];
    for (r, key) in cases {
        let e = Firewall::new(&FirewallSpec {
            rules: vec![r],
            ..FirewallSpec::default()
        })
        .unwrap_err();
        assert_eq!(e.key, key, "{e}");
    }
    let twice = Firewall::new(&FirewallSpec {
        rules: vec![rule("a", Action::Deny), rule("a", Action::Deny)],
        ..FirewallSpec::default()
    })
    .unwrap_err();
    assert_eq!(twice.key, "firewall.rules[1].id");
    let bad_cidr = Firewall::new(&FirewallSpec {
        groups: vec![GroupSpec {
            name: "g".into(),
            users: vec![],
            clients: vec!["10.0.0.0/33".into()],
        }],
        ..FirewallSpec::default()
    })
    .unwrap_err();
    assert_eq!(bad_cidr.key, "firewall.groups[0].clients[0]");
    assert!(!Firewall::default().is_active());
}

#[test]
fn info_time_and_dates() {
    let t = info_time(br#"{"Version":"v1.0.0","Time":"2026-11-30T12:00:00Z"}"#).unwrap();
    assert_eq!(date(t), "2026-11-30");
    assert_eq!(info_time(b"{}"), None);
    assert_eq!(
        info_version(br#"{"Version":"v1.0.0","Time":"2026-11-30T12:00:00Z"}"#).as_deref(),
        Some("v1.0.0")
    );
    assert_eq!(info_version(b"[]"), None);
    assert_eq!(date(at(6)), "2026-12-07");
}
