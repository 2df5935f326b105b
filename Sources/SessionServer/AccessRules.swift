import ConfigFile
import Foundation

/// Users and groups, by name or number.
public struct Principals: Sendable, Equatable {
    public var users: [String] = []
    public var groups: [String] = []

    public init(users: [String] = [], groups: [String] = []) {
        self.users = users
        self.groups = groups
    }
}

/// Who may do what over the socket: admins may do everything; a context may be used by whoever a rule whose
/// pattern matches it names (`*` matches any run of characters: `"*"`, `"user-*"`).
public struct AccessRules: Sendable, Equatable {
    public struct Rule: Sendable, Equatable {
        public let pattern: String
        public let principals: Principals
        /// The pattern split at its `*`s, once: `matches` runs on every token request.
        private let parts: [Substring]

        public init(pattern: String, principals: Principals) {
            self.pattern = pattern
            self.principals = principals
            parts = pattern.split(separator: "*", omittingEmptySubsequences: false)
        }

        public func matches(_ context: String) -> Bool {
            guard parts.count > 1 else { return pattern == context }
            var rest = Substring(context)
            guard rest.hasPrefix(parts[0]) else { return false }
            rest = rest.dropFirst(parts[0].count)
            for part in parts.dropFirst().dropLast() {
                guard let range = rest.range(of: part) else { return false }
                rest = rest[range.upperBound...]
            }
            return rest.hasSuffix(parts.last!)
        }
    }

    public var admin: Principals
    public var contexts: [Rule]

    public static let `default` = AccessRules(admin: Principals(users: ["root"]),
                                              contexts: [Rule(pattern: "*", principals: Principals(groups: ["bunq-session"]))])
}

extension AccessRules: ConfigSection {
    public static let configKeys: [ConfigKeys] = [.shaped("access")]

    /// `access: {admin: {users, groups}, contexts: {PATTERN: {users, groups}}}`; users and groups by name or
    /// number. Without the section: root is admin and the group bunq-session may use every context.
    public init(reading config: ConfigReader) throws(ConfigurationError) {
        guard let section = config.node(["access"]), !section.isNull else {
            self = .default
            return
        }
        guard let entries = section.entries else { throw config.fail("access", "must be a mapping {admin, contexts}") }
        func principals(_ node: ConfigNode) throws(ConfigurationError) -> Principals {
            guard let fields = node.entries else { throw config.fail(node.key, "must be a mapping {users: [...], groups: [...]}") }
            var result = Principals()
            for (name, value) in fields {
                guard name == "users" || name == "groups" else { throw config.fail(value.key, "is not a known key (users, groups)") }
                guard let list = value.list, case let items = list.compactMap(\.scalar), items.count == list.count else {
                    throw config.fail(value.key, "must be a list of names or numbers")
                }
                if name == "users" { result.users = items } else { result.groups = items }
            }
            return result
        }
        var rules = AccessRules(admin: Principals(), contexts: [])
        for (field, value) in entries {
            switch field {
            case "admin": rules.admin = try principals(value)
            case "contexts":
                guard let contexts = value.entries else { throw config.fail("access.contexts", "must be a mapping of context patterns") }
                for (pattern, principalsNode) in contexts {
                    rules.contexts.append(Rule(pattern: pattern, principals: try principals(principalsNode)))
                }
            default:
                throw config.fail("access.\(field)", "is not a known key (admin, contexts)")
            }
        }
        self = rules
    }
}
