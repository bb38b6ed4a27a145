# Regular expressions (POSIX ERE, for `builtins.match`, which matches the whole string)
# that mirror ccfleet-proto's parsers, so a bad declaration fails at evaluation time
# with the option's name instead of later in the agent. tests/tests/it/nix.rs checks
# them against the Rust parsers.
let
  number = "(0|[1-9][0-9]*)";
  identifier = "[0-9A-Za-z-]+";
  label = "[a-z0-9]([a-z0-9-]*[a-z0-9])?";
in
{
  # `<recipe semver>[+<upstream>]` (`CoopVersion`): MAJOR.MINOR.PATCH without leading
  # zeros and an optional pre-release, then an optional upstream part that starts with
  # a letter or digit.
  version =
    "${number}\\.${number}\\.${number}(-${identifier}(\\.${identifier})*)?"
    + "(\\+[0-9A-Za-z][0-9A-Za-z._-]*)?";

  # A lowercase fully qualified domain (`Domain`): two or more labels, no leading or
  # trailing '-' in a label. Together with `numericTopLevel` (which must NOT match:
  # an IP address is not a domain). Length limits are left to the agent's check.
  domain = "(${label}\\.)+${label}";
  numericTopLevel = ".*\\.[0-9]+";
}
