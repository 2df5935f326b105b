import Foundation

/// A PostgreSQL server of the test's own, from Debian's `postgresql` package: a copy of a cluster made by `initdb`
/// (as the `postgres` user) in a temporary directory, `pg_ctl` on a free loopback port with password (SCRAM) authentication over TCP, and one
/// database owned by a login role. Stopped (and its files removed) by `stop()`. Needs root, to run as `postgres`.
public final class PostgresServer: Sendable {
    public let directory: TemporaryDirectory
    public let port: Int
    public let database = "bunq_sessiond"
    public let user = "bunq_sessiond"
    /// The role's password (in `passwordFile` as well, mode 0600).
    public let password: String
    public let passwordFile: String
    let binaries: String

    /// Why a server cannot be started here, or nil.
    public static var unavailable: String? {
        if getuid() != 0 { return "needs root to run PostgreSQL as the postgres user (runs in CI)" }
        if binaryDirectory == nil { return "PostgreSQL is not installed (make deps installs Debian's postgresql)" }
        return nil
    }

    static var binaryDirectory: String? {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).compactMap(Int.init).sorted()
        return versions.last.map { "\(root)/\($0)/bin" }.flatMap { FileManager.default.fileExists(atPath: $0 + "/initdb") ? $0 : nil }
    }

    public init() throws {
        guard let binaries = Self.binaryDirectory else { throw Failure("PostgreSQL is not installed") }
        self.binaries = binaries
        directory = try TemporaryDirectory("pg")
        chmod(directory.url.path, 0o755)
        password = UUID().uuidString
        passwordFile = try directory.write("role-password", password)
        chmod(passwordFile, 0o600)
        let data = directory.path("data")
        try Command.check(["chown", "postgres", directory.url.path])
        try Command.check(["cp", "-a", try Self.template(binaries), data])
        port = try freeLoopbackPort()
        try start()
        try psql("CREATE ROLE \(user) LOGIN PASSWORD '\(password)'")
        try psql("CREATE DATABASE \(database) OWNER \(user)")
    }

    /// A cluster fresh from `initdb`, made once per PostgreSQL version on this machine and copied for each server
    /// (a copy costs a fifth of an `initdb`'s CPU; the suites start about twenty servers). Kept beside the systemd
    /// test's cached root, in /var/cache/bunq-sessiond-test, and made in a directory of its own then renamed into
    /// place, so a run that dies halfway leaves no half-made template behind. The superuser's password is no secret:
    /// it is never used (the tests connect as the superuser over the Unix socket, trusted, and as the role with the
    /// role's own password).
    static func template(_ binaries: String) throws -> String {
        let cache = "/var/cache/bunq-sessiond-test"
        let version = URL(fileURLWithPath: binaries).deletingLastPathComponent().lastPathComponent
        let template = "\(cache)/postgresql-\(version)-template-v1"
        if FileManager.default.fileExists(atPath: template + "/PG_VERSION") { return template }
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        let making = "\(template).making-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: making, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: making) }
        let superuserPassword = making + ".password"
        try Data(UUID().uuidString.utf8).write(to: URL(fileURLWithPath: superuserPassword))
        defer { try? FileManager.default.removeItem(atPath: superuserPassword) }
        try Command.check(["chown", "postgres", making, superuserPassword])
        try Command.check(["runuser", "-u", "postgres", "--", binaries + "/initdb", "-D", making, "-U", "postgres",
                           "--pwfile=\(superuserPassword)", "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8",
                           "--no-sync"])
        // Another process may have made it meanwhile: then its template stays, and this one goes.
        if rename(making, template) != 0, !FileManager.default.fileExists(atPath: template + "/PG_VERSION") {
            throw Failure("cannot move the PostgreSQL template into \(template): \(String(cString: strerror(errno)))")
        }
        return template
    }

    /// The URL a daemon is configured with (its password from `passwordFile`).
    public var url: String { "postgresql://\(user)@127.0.0.1:\(port)/\(database)" }

    /// Runs SQL as the superuser over the server's Unix socket.
    @discardableResult
    public func psql(_ sql: String, database: String = "postgres") throws -> String {
        try Command.check(["runuser", "-u", "postgres", "--", binaries + "/psql", "-h", directory.url.path, "-p", "\(port)",
                           "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql]).stdoutText
    }

    /// Stops the server (`immediate`: like a crash, or `fast`).
    public func halt(_ mode: String = "fast") {
        _ = try? Command.run(["runuser", "-u", "postgres", "--", binaries + "/pg_ctl", "-D", directory.path("data"), "-m", mode,
                              "-w", "stop"])
    }

    /// Freezes the server: the postmaster and every backend stopped with SIGSTOP. Connections stay open, nothing
    /// is refused, nothing answers: what a stuck disk or a failover looks like from a client.
    public func freeze() { signalAll(SIGSTOP) }

    /// Lets a frozen server go on.
    public func thaw() { signalAll(SIGCONT) }

    /// The postmaster's pid and its children's, from /proc.
    private func signalAll(_ signal: Int32) {
        guard let text = try? String(contentsOfFile: directory.path("data/postmaster.pid"), encoding: .utf8),
              let first = text.split(separator: "\n").first, let postmaster = Int32(first) else { return }
        var pids = [postmaster]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry),
                  let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 2, Int32(fields[1]) == postmaster { pids.append(pid) }
        }
        // The postmaster first when stopping (no new backend is forked meanwhile), last when continuing.
        for pid in signal == SIGSTOP ? pids : pids.reversed() { kill(pid, signal) }
    }

    /// Starts it again on the same port.
    public func restart() throws { try start() }

    /// `pg_ctl start` through Python's `subprocess` (which closes every other descriptor): the server pg_ctl
    /// leaves running inherits its descriptors, and Foundation's `Process` leaks its pipes into the child, so a
    /// pipe held by the server would keep this process waiting for an end of file that never comes.
    private func start() throws {
        let launcher = """
            import subprocess,sys
            with open(sys.argv[1],'w') as log:
                sys.exit(subprocess.call(sys.argv[2:],stdin=subprocess.DEVNULL,stdout=log,stderr=subprocess.STDOUT,close_fds=True))
            """
        let status = try Command.run(["/usr/bin/python3", "-c", launcher, directory.path("pg_ctl.log"), "runuser", "-u", "postgres",
                                      "--", binaries + "/pg_ctl", "-D", directory.path("data"), "-l", directory.path("server.log"), "-w",
                                      "-o", "-p \(port) -k \(directory.url.path) -c listen_addresses=127.0.0.1 -c fsync=off",
                                      "start"]).status
        guard status == 0 else {
            throw Failure("pg_ctl start exited \(status): \((try? directory.read("pg_ctl.log")) ?? "")")
        }
    }

    public func stop() {
        halt("immediate")
        directory.remove()
    }


    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }
}
