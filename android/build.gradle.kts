// pocketlm Android library (AAR): generated uniffi Kotlin bindings + hand-written sugar
// (src/main/kotlin) + the Rust library for each ABI in jniLibs/<abi>/, built by
// `cargo xtask android` with the NDK this build uses. Not buildable on the project's CI
// machines (no Android SDK/NDK there): CI compiles the same Kotlin with kotlinc and runs
// src/test on a JVM (tests/kotlin.sh).
plugins {
    id("com.android.library") version "8.7.3"
    id("org.jetbrains.kotlin.android") version "2.1.0"
}

val repoRoot = projectDir.parentFile
val uniffiOut = layout.buildDirectory.dir("generated/uniffi/kotlin")

android {
    namespace = "dev.pocketlm"
    compileSdk = 35
    ndkVersion = "27.2.12479018"
    defaultConfig {
        minSdk = 24
        consumerProguardFiles("consumer-rules.pro")
    }
    sourceSets["main"].java.srcDirs("src/main/kotlin", uniffiOut)
    sourceSets["main"].jniLibs.srcDirs("src/main/jniLibs")
    sourceSets["test"].java.srcDirs("src/test/kotlin")
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
}

dependencies {
    implementation("net.java.dev.jna:jna:5.13.0@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-core:1.8.0")
    testImplementation("junit:junit:4.13.2")
    testImplementation("net.java.dev.jna:jna:5.13.0")
}

// Bindings are generated at build time from the Rust library, never committed.
val uniffiBindgen by tasks.registering(Exec::class) {
    workingDir = repoRoot
    commandLine("cargo", "xtask", "bindgen", "--language", "kotlin", "--out", uniffiOut.get().asFile.path)
}

// The Rust library for every ABI, linked with this build's NDK, into src/main/jniLibs.
val rustAndroid by tasks.registering(Exec::class) {
    workingDir = repoRoot
    environment("ANDROID_NDK_HOME", android.ndkDirectory.path)
    commandLine("cargo", "xtask", "android")
}

tasks.named("preBuild") { dependsOn(uniffiBindgen, rustAndroid) }
