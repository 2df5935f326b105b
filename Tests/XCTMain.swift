// The test bundle's entry point, in place of the one SwiftPM generates. SwiftPM's lists the XCTest cases it finds
// in the index store, and so needs every module indexed while it compiles: a tenth of a fresh build's CPU. Every
// test here is a Swift Testing test, which finds its tests at run time, so `make` builds with
// --disable-index-store and runs `swift test --enable-swift-testing --disable-xctest` (`make check`, in the
// README). SwiftPM still asks the XCTest half for its list when it filters: that list is empty.
import Foundation
import Testing
#if canImport(XCTest)
import XCTest
#endif

@main struct TestMain {
    static func main() async {
        let arguments = CommandLine.arguments
        if let flag = arguments.firstIndex(of: "--testing-library"), flag + 1 < arguments.count,
           arguments[flag + 1] == "swift-testing" {
            await Testing.__swiftPMEntryPoint() as Never
        }
        if !arguments.contains("--dump-tests-json") {
            FileHandle.standardError.write(Data("""
                These are Swift Testing tests: run them with `make check` (FILTER=… for a few), or with `swift test \
                --disable-index-store --enable-swift-testing --disable-xctest`.

                """.utf8))
        }
        #if canImport(XCTest)
        XCTMain([]) as Never
        #else
        exit(0)
        #endif
    }
}
