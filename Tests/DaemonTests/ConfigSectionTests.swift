import BunqProxy
import ConfigFile
import Foundation
import MetricsEndpoint
import SessiondConfiguration
import SessionKeeper
import SessionServer
import TestThreads
import Testing
import TestSupport

/// The configuration file as its sections read it: each module's type, the whole read at once, and the shipped
/// example kept in step with what the types read. (`CheckConfigTests` runs the binary on good and bad files.)
@Suite(.ownThread) struct ConfigSectionTests {
    static var example: URL {
        Binaries.directory.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("config/bunq-sessiond.yaml")
    }

    func load(_ yaml: String, environment: [String: String] = [:]) throws -> DaemonConfiguration {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        return try DaemonConfiguration.load(file: try dir.write("config.yaml", yaml), environment: environment)
    }

    /// Every key a section's type reads appears in `config/bunq-sessiond.yaml` (set or commented) inside its
    /// section: a key added to a type without its documentation fails here. The other direction, a documented key no
    /// type reads, fails `CheckConfigTests.theDocumentedExampleIsValid` (unknown keys are refused).
    @Test func everyKeyTheSectionsReadIsDocumentedInTheExample() throws {
        let lines = try String(contentsOf: Self.example, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
        let header = /^(# )?([a-z_]+):/
        for keys in DaemonConfiguration.configKeys {
            guard let start = lines.firstIndex(where: { $0.firstMatch(of: header)?.output.2 == Substring(keys.section) }) else {
                Issue.record("config/bunq-sessiond.yaml does not document the section \(keys.section)")
                continue
            }
            guard case .mapping(_, let names) = keys else { continue }
            let end = lines[(start + 1)...].firstIndex { $0.firstMatch(of: header) != nil } ?? lines.endIndex
            let block = lines[(start + 1)..<end]
            for name in names.sorted() {
                let documented = block.contains { $0.firstMatch(of: /^\s*(#\s*)?([a-z0-9_]+):/)?.output.2 == Substring(name) }
                #expect(documented, "config/bunq-sessiond.yaml does not document \(keys.section).\(name)")
            }
        }
    }

    @Test func eachSectionIsReadByItsOwnTypeWithTheEnvironmentOnTop() throws {
        let configuration = try load("""
            bunq: {rate_limits: bunq, rate_limit_scale: 0.5}
            state: {directory: /tmp/bunq-config-test-state}
            socket: {path: /run/test/socket, max_connections: 10, send_timeout: 7}
            proxy: {socket: /run/test/proxy.sock, timeout: 9}
            access: {admin: {users: [root, '0']}, contexts: {"user-*": {groups: [apps]}}}
            api_keys: []
            """, environment: ["BUNQ_SESSIOND_SOCKET_MAX_CONNECTIONS_PER_UID": "3",
                               "BUNQ_SESSIOND_METRICS_LISTEN": "[::1]:9464"])
        #expect(configuration.keeper.bunq.rateLimitScale == 0.5)
        #expect(configuration.keeper.state.directory == "/tmp/bunq-config-test-state")
        #expect(configuration.socket.path == "/run/test/socket")
        #expect(configuration.socket.limits.maxConnections == 10)
        #expect(configuration.socket.limits.maxConnectionsPerUID == 3)
        #expect(configuration.socket.limits.sendTimeout == .seconds(7))
        let proxy = try #require(configuration.proxy)
        #expect(proxy.socket == "/run/test/proxy.sock")
        #expect(proxy.limits.timeout == .seconds(9))
        #expect(proxy.limits.maxConnections == 1_024)
        // The proxy has no send timeout of its own: it is the socket's.
        #expect(proxy.limits.sendTimeout == .seconds(7))
        #expect(configuration.metrics?.listen == .tcp(host: "::1", port: 9464))
        #expect(configuration.access.admin.users == ["root", "0"])
        #expect(configuration.access.contexts.map(\.pattern) == ["user-*"])
        #expect(configuration.access.contexts.first?.matches("user-42") == true)
    }

    @Test func absentSectionsMeanTheirDefaults() throws {
        let configuration = try load("api_keys: []\n", environment: ["STATE_DIRECTORY": "/var/lib/x:/var/lib/y"])
        #expect(configuration.proxy == nil)
        #expect(configuration.metrics == nil)
        #expect(configuration.access == .default)
        #expect(configuration.socket.path == "/run/bunq-sessiond/socket")
        #expect(configuration.socket.limits.idleTimeout == .seconds(300))
        #expect(configuration.keeper.state.directory == "/var/lib/x")
        #expect(configuration.keeper.state.timeout == .seconds(2))
        #expect(configuration.keeper.cluster == nil)
        #expect(configuration.keeper.renewal.policy == RenewalPolicy())
    }

    /// A refusal names the file and the key, whichever section's type refuses; and sections are checked against
    /// each other (the proxy's socket is not the JSON-RPC socket's).
    @Test func refusalsNameTheKeyWhicheverSectionRefuses() throws {
        let cases: [(String, String)] = [
            ("socket: {pth: /x}\n", "socket.pth: is not a known key"),
            ("metrics: {listen: 'localhost:80'}\n", "metrics.listen: must be HOST:PORT"),
            ("proxy: {timeout: 5}\n", "proxy.socket: is required when a proxy section is given"),
            ("proxy: {socket: /run/bunq-sessiond/socket}\n", "proxy.socket: must not be socket.path"),
            ("access: {admin: {users: root}}\n", "access.admin.users: must be a list of names or numbers"),
            ("api_keys: [{name: ops}]\n", "api_keys[0]: needs key_file or key_credential"),
            ("cluster: {instance: a}\n", "cluster: is only read with state.backend: postgresql"),
        ]
        for (yaml, expected) in cases {
            do {
                _ = try load(yaml)
                Issue.record("accepted: \(yaml)")
            } catch {
                #expect("\(error)".contains("config.yaml: \(expected)"), "\(yaml): \(error)")
            }
        }
    }
}
