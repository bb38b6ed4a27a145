# The rules `ccfleet-agent check-config` enforces (agent/src/config.rs, ccfleet-proto's
# name parsers), as Nix functions: each takes a value and returns null when the agent
# would accept it, or a lowercase fragment saying what is wrong. The modules turn them
# into assertions that name the option; tests/tests/it/nix.rs feeds the same values to
# the agent's own parser and checks that both sides agree.
#
# Deliberate approximations: whitespace and control characters are the ASCII ones
# (Rust's `char::is_whitespace` / `is_control` also know a few non-ASCII ones), and a
# duration is "zero" when all its digits are 0.
{ lib }:

let
  patterns = import ./patterns.nix;

  matches = pattern: text: builtins.match pattern text != null;
  hasControl = text: !matches "[^[:cntrl:]]*" text;
  hasWhitespaceOrControl = text: !matches "[^[:cntrl:][:space:]]*" text;
  length = builtins.stringLength;

  # The first problem of a list of (condition, problem) pairs, or null. Lazy: a rule
  # is only looked at when every rule before it holds, so later rules may assume them.
  firstProblem = lib.foldr (rule: rest: if rule.bad then rule.problem else rest) null;
  rule = bad: problem: { inherit bad problem; };

  # DNS-style names (app domains, host ids): lowercase labels of 1 to 63 characters.
  dnsName = { minLabels, maxLength }: text:
    let labels = lib.splitString "." text;
    in firstProblem [
      (rule (text == "") "must not be empty")
      (rule (length text > maxLength) "is ${toString (length text)} characters long, the limit is ${toString maxLength}")
      (rule (!matches "[a-z0-9.-]*" text) "may only contain lowercase letters, digits, '-' and '.'")
      (rule (lib.any (label: label == "") labels) "has an empty label (two dots in a row, or a leading or trailing dot)")
      (rule (lib.any (label: length label > 63) labels) "has a label longer than 63 characters")
      (rule (lib.any (label: lib.hasPrefix "-" label || lib.hasSuffix "-" label) labels) "has a label that starts or ends with '-'")
      (rule (builtins.length labels < minLabels) "must be a fully qualified domain such as blog.example.org")
      (rule (minLabels > 1 && matches "[0-9]+" (lib.last labels)) "must be a domain name, not an IP address")
    ];

  humantimeUnit = lib.concatStringsSep "|" [
    "nanos" "nsec" "ns" "usec" "us" "µs" "millis" "msec" "ms"
    "seconds" "second" "secs" "sec" "s" "minutes" "minute" "min" "mins" "m"
    "hours" "hour" "hr" "hrs" "h" "days" "day" "d" "weeks" "week" "wk" "wks" "w"
    "months" "month" "M" "years" "year" "yr" "yrs" "y"
  ];
  # humantime 2.x: numbers (which may contain spaces), an optional fraction, a unit,
  # repeated; whitespace around and between.
  humantimeGroup = "[0-9][0-9[:space:]]*(\\.[0-9[:space:]]*[0-9][0-9[:space:]]*)?(${humantimeUnit})";
  humantimePattern = "[[:space:]]*${humantimeGroup}([[:space:]]*${humantimeGroup})*[[:space:]]*";

  absolutePath = text: firstProblem [
    (rule (text == "") "must not be empty")
    (rule (hasControl text) "contains a control character")
    (rule (!lib.hasPrefix "/" text) "must be an absolute path")
    (rule (lib.elem ".." (lib.splitString "/" text)) "must not contain '..'")
  ];
in
rec {
  inherit absolutePath;

  # `CoopVersion`: <recipe semver>[+<upstream>].
  version = text:
    if matches patterns.version text then null
    else "is not a recipe version <semver>[+<upstream>], e.g. \"1.3.0+6.42.0-alpine\"";

  # `Domain`: a lowercase fully qualified domain, at most 253 characters.
  domain = dnsName { minLabels = 2; maxLength = 253; };

  # `HostId`: like a domain, but a single label is fine and so is a numeric last label.
  hostId = dnsName { minLabels = 1; maxLength = 253; };

  # `RecipeName`: lowercase letters, digits and single '-', starting with a letter.
  recipe = text: firstProblem [
    (rule (text == "") "must not be empty")
    (rule (length text > 64) "is ${toString (length text)} characters long, the limit is 64")
    (rule (!matches "[a-z0-9-]*" text) "may only contain lowercase letters, digits and '-'")
    (rule (!matches "[a-z].*" text) "must start with a lowercase letter")
    (rule (lib.hasSuffix "-" text || lib.hasInfix "--" text) "must not end with '-' or contain '--'")
  ];

  # A humantime duration longer than zero ("90s", "15m", "1h 30m"), or a number of
  # seconds (the seed's notation) which the modules render as "<n>s".
  duration = value:
    if builtins.isInt value then
      (if value > 0 then null else "must be a positive number of seconds")
    else if !matches humantimePattern value then
      "is not a duration; write e.g. \"90s\", \"15m\" or \"1h 30m\" (or a number of seconds)"
    else if !matches ".*[1-9].*" value then
      "must be longer than zero"
    else null;

  # `https://host[:port][/path]`: the server speaks TLS only, the agent authenticates
  # with its certificate (no credentials in the URL).
  serverUrl = text:
    let
      parts = builtins.match "([^:/]*)://([^/?#]*)(.*)" text;
      scheme = builtins.elemAt parts 0;
      authority = builtins.elemAt parts 1;
      bracketed = builtins.match "\\[([^]]*)](:(.*))?" authority;
      plain = builtins.match "([^:]*)(:(.*))?" authority;
      hostAndPort =
        if lib.hasPrefix "[" authority then
          (if bracketed == null then null else { host = builtins.elemAt bracketed 0; port = builtins.elemAt bracketed 2; })
        else { host = builtins.elemAt plain 0; port = builtins.elemAt plain 2; };
      # Leading zeros are fine (Rust's `u16` parser takes them), 0 is not a port.
      portDigits = port: builtins.match "0*([0-9]{1,5})" port;
      validPort = port:
        port == null
        || (portDigits port != null
          && builtins.fromJSON (builtins.head (portDigits port)) > 0
          && builtins.fromJSON (builtins.head (portDigits port)) < 65536);
    in
    firstProblem [
      (rule (parts == null) "is not a URL; write e.g. \"https://fleet.example.org:7443\"")
      (rule (hasWhitespaceOrControl text) "contains whitespace or a control character")
      (rule (lib.hasInfix "@" authority) "must not carry credentials; the agent authenticates with its certificate")
      (rule (hostAndPort == null) "has an unclosed '[' in its host")
      (rule (!validPort hostAndPort.port) "has an invalid port")
      (rule (hostAndPort.host == "") "has no host")
      (rule (scheme == "http") "uses plain http; the server speaks TLS only, use https://")
      (rule (scheme != "https") "must use https://")
    ];

  # `host.labels` keys and values.
  labelKey = text: firstProblem [
    (rule (text == "" || length text > 128) "must be 1 to 128 characters long")
    (rule (!matches "[a-z0-9._/-]*" text) "may only contain lowercase letters, digits, '.', '_', '-' and '/'")
  ];
  labelValue = text: firstProblem [
    (rule (length text > 256) "is ${toString (length text)} bytes long, the limit is 256")
    (rule (hasControl text) "contains a control character")
  ];

  # An app's `.env` variables; TYPE and DOMAIN are written by abra itself.
  envKey = text: firstProblem [
    (rule (!matches "[A-Z_][A-Z0-9_]*" text) "is not a variable name: must match ^[A-Z_][A-Z0-9_]*$ (uppercase letters, digits and '_')")
    (rule (lib.elem text [ "TYPE" "DOMAIN" ]) "is written by abra itself and cannot be set here")
  ];
  envValue = text: firstProblem [
    (rule (length text > 4096) "is ${toString (length text)} bytes long, the limit is 4096")
    (rule (lib.hasInfix "\n" text || lib.hasInfix "\r" text) "must not contain a newline or carriage return (the .env file holds one line per variable)")
  ];

  # abra secret names.
  secretName = text:
    if matches "[a-z0-9_]+" text then null
    else "is not an abra secret name: must match ^[a-z0-9_]+$ (lowercase letters, digits and '_')";

  healthPath = text: firstProblem [
    (rule (!lib.hasPrefix "/" text) "must start with \"/\" (or be null for no HTTP probe)")
    (rule (length text > 1024) "is ${toString (length text)} bytes long, the limit is 1024")
    (rule (hasWhitespaceOrControl text) "must not contain whitespace or control characters")
  ];

  # systemd `OnCalendar` text, as the agent bounds it.
  schedule = text: firstProblem [
    (rule (lib.trim text == "") "must not be empty")
    (rule (length text > 128) "is ${toString (length text)} bytes long, the limit is 128")
    (rule (hasControl text) "contains a control character (a newline would also break the timer unit)")
  ];

  # `abra.binary`: a bare program name looked up on PATH, or an absolute path.
  abraBinary = text:
    if lib.hasPrefix "/" text then absolutePath text
    else if text != "" && !lib.hasPrefix "-" text && matches "[A-Za-z0-9._-]+" text then null
    else "must be a bare program name looked up on PATH (such as \"abra\") or an absolute path";

  # `abra.server`.
  abraServer = text:
    if length text >= 1 && length text <= 253 && matches "[a-z0-9_][a-z0-9._-]*" text then null
    else "is not an abra server name: 1 to 253 lowercase letters, digits, '.', '-', '_', not starting with '-' or '.'";

  # `services.coop-cloud.apps.<name>` and `appName`: the name becomes part of the unit
  # names cc-app-<name>.service, cc-app-<name>-update.timer, cc-app-<name>-secrets.path.
  appName = text:
    if length text >= 1 && length text <= 200 && matches "[A-Za-z0-9][A-Za-z0-9_.-]*" text then null
    else "cannot be part of a systemd unit name (cc-app-<name>.service): use 1 to 200 letters, digits, '-', '_' and '.', starting with a letter or digit";
}
