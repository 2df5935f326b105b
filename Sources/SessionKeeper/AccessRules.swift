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
