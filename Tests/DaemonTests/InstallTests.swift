import Foundation
import TestThreads
import Testing
import TestSupport

/// `make install` puts binaries, units, sysusers and the example config in place, and the units pass
/// `systemd-analyze verify` with a security exposure of at most 1.5.
@Suite(.ownThread) struct InstallTests {
    @Test func makeInstallAndTheUnitsPassSystemdAnalyze() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") else {
            #expect(!Skip.report("makeInstallAndTheUnitsPassSystemdAnalyze: systemd-analyze is not installed"))
            return
        }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let repository = Binaries.directory.deletingLastPathComponent().deletingLastPathComponent().path
        let prefix = dir.path("usr")
        // install-files: the installation step of `make install`, from the binaries this test run built (a build
        // step here would wait forever for the .build lock `swift test` holds).
        // CONFIG_GROUP: a group every Debian system has, so the test creates no user on the machine; the default,
        // the service's own group, is made by systemd-sysusers at a real installation.
        let install = try Command.run(["make", "-C", repository, "install-files", "BUILT=\(Binaries.directory.path)",
                                       "PREFIX=\(prefix)", "SYSCONFDIR=\(dir.path("etc"))", "CONFIG_GROUP=daemon"])
        #expect(install.status == 0, "\(install.stderrText)")
        for binary in ["bunq-sessiond", "bunq-sessionctl", "bunq-sandbox"] {
            #expect(FileManager.default.isExecutableFile(atPath: "\(prefix)/bin/\(binary)"), "\(binary) installed")
        }
        let service = "\(prefix)/lib/systemd/system/bunq-sessiond.service"
        let socket = "\(prefix)/lib/systemd/system/bunq-sessiond.socket"
        let unit = try String(contentsOfFile: service, encoding: .utf8)
        #expect(unit.contains("ExecStart=\(prefix)/bin/bunq-sessiond --config /etc/bunq-sessiond/bunq-sessiond.yaml"))
        #expect(unit.contains("Type=notify") && unit.contains("WatchdogSec=") && unit.contains("ExecReload="))
        #expect(!unit.contains("\nPrivateUsers="), "PrivateUsers= would hide callers' uids from SO_PEERCRED")
        #expect(FileManager.default.fileExists(atPath: "\(prefix)/lib/sysusers.d/bunq-sessiond.conf"))
        let config = dir.path("etc/bunq-sessiond/bunq-sessiond.yaml")
        var info = stat()
        #expect(stat(config, &info) == 0 && info.st_mode & 0o777 == 0o640, "the example config, not world-readable")
        #expect(getgrgid(info.st_gid).map { String(cString: $0.pointee.gr_name) } == "daemon",
                "the config belongs to the service's group, which must read it")

        let verify = try Command.run(["systemd-analyze", "verify", service, socket])
        #expect(verify.status == 0 && verify.stderrText.isEmpty, "systemd-analyze verify: \(verify.stderrText)")
        let security = try Command.run(["systemd-analyze", "security", "--offline=true", service])
        let line = security.stdoutText.split(separator: "\n").last { $0.contains("Overall exposure level") } ?? ""
        let exposure = line.split(separator: " ").compactMap { Double($0) }.first ?? 99
        #expect(exposure <= 1.5, "exposure \(exposure): \(line)")
    }
}
