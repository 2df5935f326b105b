import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Socket activation as systemd does it, for a test: a listening Unix socket made here, then a process started
/// with it as fd 3 and `LISTEN_FDS=1`, `LISTEN_PID` its own pid (python sets it, then execs the program, so the
/// pid is the program's). Spawned with posix_spawn, not Foundation's `Process`, which cannot pass a descriptor.
final class ActivationSocket {
    let fd: Int32

    /// `fd` is set only once the socket listens: an initializer that throws after setting it would run `deinit`,
    /// which would close it a second time (see RawSocketClient).
    init(_ path: String) throws {
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw HarnessError("cannot listen on \(path): \(reason)")
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Starts `executable` with the socket as fd 3; stdout and stderr go to `log`.
    func spawn(_ executable: String, _ arguments: [String], log: String, environment: [String] = []) throws -> SpawnedProcess {
        let logFD = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard logFD >= 0 else { throw HarnessError("cannot open \(log)") }
        defer { close(logFD) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, logFD, 1)
        posix_spawn_file_actions_adddup2(&actions, logFD, 2)
        posix_spawn_file_actions_adddup2(&actions, fd, 3)
        // Python closes every other descriptor (Foundation watches its own children by descriptors; none may leak),
        // sets LISTEN_PID to its pid and execs the program, which keeps that pid.
        let script = "import os,sys; os.closerange(4, 65536); os.environ['LISTEN_FDS']='1'; "
            + "os.environ['LISTEN_PID']=str(os.getpid()); os.execv(sys.argv[1], sys.argv[1:])"
        let argv = ["/usr/bin/python3", "-c", script, executable] + arguments
        let env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("LISTEN_") && $0.key != "NOTIFY_SOCKET" }
            .map { "\($0.key)=\($0.value)" } + environment
        var pid: pid_t = 0
        let status = withCStrings(argv) { cArgv in
            withCStrings(env) { cEnv in posix_spawn(&pid, "/usr/bin/python3", &actions, nil, cArgv, cEnv) }
        }
        guard status == 0 else { throw HarnessError("posix_spawn: \(String(cString: strerror(status)))") }
        return SpawnedProcess(pid: pid, logPath: log)
    }

    private func withCStrings<R>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
        var pointers = strings.map { strdup($0) }
        pointers.append(nil)
        defer { for pointer in pointers { free(pointer) } }
        return body(pointers)
    }
}

/// A process started with posix_spawn: its log, and a stop that never leaves it behind.
struct SpawnedProcess {
    let pid: pid_t
    let logPath: String

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// SIGTERM, up to 20 s for the exit, then SIGKILL; returns the exit status (128 + signal when killed).
    func stop() -> Int32 {
        kill(pid, SIGTERM)
        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(20)
        while waitpid(pid, &status, WNOHANG) == 0 {
            if Date() > deadline { kill(pid, SIGKILL) }
            usleep(50_000)
        }
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}
