// swift-tools-version:5.9
// pocketlm for iOS (and macOS): the Rust library as a binary XCFramework, the uniffi-generated
// Swift API and hand-written async sugar. Build the framework and sources first, on a Mac:
//   cargo xtask ios
import PackageDescription

let package = Package(
    name: "PocketLM",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "PocketLM", targets: ["PocketLM"]),
    ],
    targets: [
        .binaryTarget(name: "PocketLMFFI", path: "PocketLMFFI.xcframework"),
        .target(name: "PocketLM", dependencies: ["PocketLMFFI"], path: "Sources/PocketLM"),
        .testTarget(name: "PocketLMTests", dependencies: ["PocketLM"], path: "Tests/PocketLMTests"),
    ]
)
