import Foundation
import TestThreads
import Testing
import TestSupport

/// `--check-config`: exit 0, or 78 with the file, the key and the reason.
@Suite(.ownThread) struct CheckConfigTests {
    func check(_ yaml: String, in dir: TemporaryDirectory, environment: [String: String] = [:]) throws -> Command.Output {
        let path = try dir.write("config-\(UUID().uuidString).yaml", yaml)
        let env = environment.map { "\($0.key)=\($0.value)" }
        return try Command.run(["env", "-u", "CREDENTIALS_DIRECTORY"] + env + [Binaries.daemon, "--config", path, "--check-config"])
    }

    @Test func validAndInvalidConfigurations() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        _ = try dir.write("ops.key", "sandbox_abc\n")
        // Only validated, never run: no bunq call is made, so `rate_limits: unlimited` limits nothing here; the
        // keys' own rules (below) are checked with either value.
        let base = """
            bunq: {environment: sandbox, rate_limits: unlimited}
            state: {directory: \(dir.path("state"))}
            api_keys:
              - {name: ops, key_file: \(dir.path("ops.key"))}

            """
        let ok = try check(base, in: dir)
        #expect(ok.status == 0, "\(ok.stderrText)")
        #expect(ok.stdoutText.contains("is valid (1 configured identities, sandbox)"))

        try Command.check(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", dir.path("k1.pem"), "-out",
                           dir.path("c1.pem"), "-days", "30", "-nodes", "-subj", "/CN=Test PISP/C=NL"])
        try Command.check(["openssl", "genpkey", "-algorithm", "RSA", "-out", dir.path("k2.pem")])
        let cases: [(String, [String: String], String)] = [
            ("bunq: {environment: staging}\n", [:], "bunq.environment: must be sandbox or production"),
            ("bunq: {enviroment: sandbox}\n", [:], "bunq.enviroment: is not a known key"),
            ("sockets: {path: /x}\n", [:], "sockets: is not a known section"),
            ("bunq: {api_base_url: 'http://api.bunq.com/v1/'}\n", [:], "bunq.api_base_url: http://api.bunq.com/v1/ uses plain http://"),
            ("bunq: {rate_limits: sometimes}\n", [:], "bunq.rate_limits: must be bunq or unlimited"),
            ("bunq: {rate_limits: unlimited, rate_limit_scale: 0.1}\n", [:], "bunq.rate_limit_scale: scales bunq's limits"),
            ("bunq: {rate_limit_scale: fast}\n", [:], "bunq.rate_limit_scale: must be a number from 0.001 to 1"),
            ("bunq: {permitted_ips: [not-an-ip]}\n", [:], "bunq.permitted_ips: 'not-an-ip' is not an IP address"),
            ("bunq: {permitted_ips: []}\n", [:], "bunq.permitted_ips: must list at least one IP address"),
            ("bunq: {permitted_ips: 1.2.3.4}\n", [:], "bunq.permitted_ips: must be a list"),
            ("api_keys: []\n", ["BUNQ_SESSIOND_BUNQ_PERMITTED_IPS": "1.2.3.4,300.1.1.1"], "bunq.permitted_ips: '300.1.1.1' is not an IP address"),
            // An empty or comment-only file is a mistake, never "no identities" (that is `api_keys: []`).
            ("", [:], "(file): is empty (or only comments); to run with no API-key identities, say so: api_keys: []"),
            ("# bunq-sessiond\n\n# api_keys: []\n", [:], "(file): is empty"),
            ("{}\n", [:], "(file): is empty"),
            ("bunq: {source_address: eth0}\n", [:], "bunq.source_address: 'eth0' is not an IP address"),
            ("renewal: {max_concurrent: 0}\n", [:], "renewal.max_concurrent: must be a whole number from 1 to 256"),
            ("api_keys:\n  - {name: ops, key_file: /nonexistent/ops.key}\n", [:], "api_keys[0].key_file: the file /nonexistent/ops.key cannot be read"),
            ("api_keys:\n  - {name: provider, key_file: \(dir.path("ops.key"))}\n", [:], "api_keys[0].name"),
            ("provider: {certificate: \(dir.path("c1.pem")), private_key: \(dir.path("k2.pem"))}\n", [:],
             "provider.private_key: \(dir.path("k2.pem")) does not belong to the certificate"),
            ("bunq: {environment: sandbox}\n", ["BUNQ_SESSIOND_BUNQ_ENVIRONMENT": "moon"], "bunq.environment: must be sandbox or production, not 'moon'"),
            ("bunq: [1, 2\n", [:], "(syntax): is not valid YAML"),
            // PostgreSQL: a URL, a shared key (never one a daemon generates), no password in the URL, TLS off loopback.
            ("api_keys: []\nstate: {backend: mysql}\n", [:], "state.backend: must be sqlite or postgresql, not 'mysql'"),
            ("api_keys: []\nstate: {timeout: 0}\n", [:], "state.timeout: must be a duration from 50ms to 300s"),
            ("api_keys: []\nstate: {timeout: soon}\n", [:], "state.timeout: must be a duration from 50ms to 300s (2s, 500ms, 1.5), not 'soon'"),
            ("api_keys: []\n", ["BUNQ_SESSIOND_STATE_TIMEOUT": "10m"], "state.timeout: must be a duration from 50ms to 300s"),
            ("api_keys: []\nstate: {backend: postgresql}\n", [:], "state.postgresql.url: is required with state.backend: postgresql"),
            ("api_keys: []\nstate: {backend: postgresql, postgresql: {url: 'postgresql://u@127.0.0.1/db'}}\n", [:],
             "state.master_key_file: is required with state.backend: postgresql"),
            ("api_keys: []\nstate: {backend: postgresql, master_key_file: /k, postgresql: {url: 'postgresql://u:SECRET-abc@127.0.0.1/db'}}\n",
             [:], "state.postgresql.url: must not hold a password"),
            ("api_keys: []\nstate: {backend: postgresql, master_key_file: /k, postgresql: {url: 'postgresql://u@db.example/db?sslmode=disable'}}\n",
             [:], "state.postgresql.url: sslmode=disable is only for a loopback host"),
            ("api_keys: []\nstate: {backend: postgresql, master_key_file: /k, postgresql: {url: 'postgresql://u@127.0.0.1/db', port: 1}}\n",
             [:], "state.postgresql.port: is not a known key"),
            ("api_keys: []\nstate: {postgresql: {url: 'postgresql://u@127.0.0.1/db'}}\n", [:],
             "state.postgresql: is only read with state.backend: postgresql"),
            ("api_keys: []\ncluster: {instance: a}\n", [:], "cluster: is only read with state.backend: postgresql"),
            ("api_keys: []\nmetrics: {listen: 'localhost:9464'}\n", [:], "metrics.listen: must be HOST:PORT"),
            ("api_keys: []\nmetrics: {listen: '127.0.0.1:99999'}\n", [:], "metrics.listen: must be HOST:PORT"),
            ("api_keys: []\nmetrics: {listen: 'unix:relative.sock'}\n", [:], "metrics.listen: must be HOST:PORT"),
            ("api_keys: []\nstate: {backend: postgresql, master_key_file: /k, postgresql: {url: 'postgresql://u@127.0.0.1/db'}}\n"
                + "cluster: {instance: 'a b'}\n", [:], "cluster.instance: must be 1 to 64 letters"),
            ("api_keys: []\nstate: {backend: postgresql, master_key_file: /k, postgresql: {url: 'postgresql://u@127.0.0.1/db'}}\n"
                + "cluster: {egress_group: \"x;y\"}\n", [:], "cluster.egress_group: must be 1 to 64 letters"),
            ("api_keys: []\nstate: {backend: postgresql, master_key_file: /k, postgresql: {url: 'postgresql://u@127.0.0.1/db'}}\n"
                + "cluster: {lease_seconds: 1}\n", [:], "cluster.lease_seconds"),
            ("api_keys: []\nstate: {backend: postgresql, master_key_file: /k, postgresql: {url: 'postgresql://u@127.0.0.1/db'}}\n"
                + "cluster: {leases: 3}\n", [:], "cluster.leases: is not a known key"),
            ("api_keys: []\nsocket: {event_loops: 0}\n", [:], "socket.event_loops: must be a whole number from 1 to 256"),
            ("api_keys: []\nproxy: {timeout: 5}\n", [:], "proxy.socket: is required when a proxy section is given"),
            ("api_keys: []\nproxy: {socket: relative.sock}\n", [:], "proxy.socket: must be an absolute path"),
            ("api_keys: []\nproxy: {socket: /run/p.sock, max_body_bytes: 0}\n", [:], "proxy.max_body_bytes: must be a whole number"),
            ("api_keys: []\nproxy: {socket: /run/p.sock, timeout: forever}\n", [:], "proxy.timeout: must be a whole number"),
            ("api_keys: []\nproxy: {socket: /run/p.sock, retries: 3}\n", [:], "proxy.retries: is not a known key"),
            // Where, by line and column, and never the file's bytes (a secret pasted in the wrong place).
            ("api_keys: []\nbunq:\n  environment: sandbox\n  ca_file: \"SECRET-abc\n", [:], "(syntax): is not valid YAML: line "),
        ]
        for (yaml, environment, expected) in cases {
            let result = try check(yaml, in: dir, environment: environment)
            #expect(result.status == 78, "\(yaml)")
            #expect(result.stderrText.contains(expected), "expected '\(expected)', got: \(result.stderrText)")
            #expect(result.stderrText.contains("config-"), "the file is named: \(result.stderrText)")
            #expect(!result.stderrText.contains("SECRET-abc"), "no byte of the file is quoted: \(result.stderrText)")
        }
        // Environment overrides apply to valid values too.
        let overridden = try check(base, in: dir, environment: ["BUNQ_SESSIOND_BUNQ_ENVIRONMENT": "production"])
        #expect(overridden.stdoutText.contains("production"))
        let missing = try Command.run([Binaries.daemon, "--config", "/nonexistent.yaml", "--check-config"])
        #expect(missing.status == 78 && missing.stderrText.contains("/nonexistent.yaml: (file): cannot be read"))
    }

    @Test func theDocumentedExampleIsValid() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let example = Binaries.directory.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("config/bunq-sessiond.yaml")
        try Command.check(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", dir.path("eidas-key.pem"), "-out",
                           dir.path("eidas-cert.pem"), "-days", "90", "-nodes", "-subj", "/CN=Example PISP AISP/C=NL"])
        _ = try dir.write("ops.key", "sandbox_example\n")
        let yaml = try String(contentsOf: example, encoding: .utf8)
            .replacingOccurrences(of: "/etc/bunq-sessiond/", with: dir.url.path + "/")
            .replacingOccurrences(of: "/var/lib/bunq-sessiond", with: dir.path("state"))
        let result = try check(yaml, in: dir)
        #expect(result.status == 0, "config/bunq-sessiond.yaml must stay valid: \(result.stderrText)")
        #expect(result.stdoutText.contains("2 configured identities"))
    }
}
