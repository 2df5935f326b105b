import Foundation
import SessionKeeper
import UnixListener
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Decides, per caller, from the configured `access:` rules. Names in the rules are resolved to uids and gids
/// when the rules are set (start, reload: never on an event loop), and a caller's groups are the kernel's view of
/// its process (`SO_PEERCRED`'s gid and `SO_PEERGROUPS`): no user-database lookup per connection, no cache to go
/// stale, a group change applies to the next connection.
public final class AccessControl: Sendable {
    /// A rule's principals as numbers.
    struct Resolved: Sendable {
        var uids: Set<UInt32> = []
        var gids: Set<UInt32> = []

        init(_ principals: Principals) {
            for user in principals.users {
                if let uid = UInt32(user) { uids.insert(uid) } else if let uid = Self.uid(user) { uids.insert(uid) }
            }
            for group in principals.groups {
                if let gid = UInt32(group) { gids.insert(gid) } else if let gid = Self.gid(group) { gids.insert(gid) }
            }
        }

        func matches(_ peer: PeerCredentials) -> Bool {
            uids.contains(peer.uid) || gids.contains(peer.gid) || (peer.groups?.contains { gids.contains($0) } ?? false)
        }

        static func uid(_ name: String) -> UInt32? {
            var buffer = [CChar](repeating: 0, count: 16_384)
            var passwd = Glibc.passwd()
            var found: UnsafeMutablePointer<Glibc.passwd>?
            guard getpwnam_r(name, &passwd, &buffer, buffer.count, &found) == 0, found != nil else { return nil }
            return passwd.pw_uid
        }

        static func gid(_ name: String) -> UInt32? {
            var buffer = [CChar](repeating: 0, count: 16_384)
            var group = Glibc.group()
            var found: UnsafeMutablePointer<Glibc.group>?
            guard getgrnam_r(name, &group, &buffer, buffer.count, &found) == 0, found != nil else { return nil }
            return group.gr_gid
        }
    }

    struct Table: Sendable {
        var admin: Resolved
        var contexts: [(rule: AccessRules.Rule, principals: Resolved)]

        init(_ rules: AccessRules) {
            admin = Resolved(rules.admin)
            contexts = rules.contexts.map { ($0, Resolved($0.principals)) }
        }
    }

    private let table: Mutex<Table>

    public init(rules: AccessRules) {
        table = Mutex(Table(rules))
    }

    /// New rules (a configuration reload), resolved now; connections keep going.
    public func update(_ rules: AccessRules) {
        let resolved = Table(rules)
        table.withLock { $0 = resolved }
    }

    public func isAdmin(_ peer: PeerCredentials) -> Bool {
        table.withLock { $0.admin.matches(peer) }
    }

    /// Whether the caller may use (get, sign, renew, watch) `context`.
    public func mayUse(_ peer: PeerCredentials, _ context: String) -> Bool {
        table.withLock { table in
            table.admin.matches(peer) || table.contexts.contains { $0.rule.matches(context) && $0.principals.matches(peer) }
        }
    }
}
