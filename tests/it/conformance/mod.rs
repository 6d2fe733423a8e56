//! The conformance suite: every test is written once here, as a function that
//! takes a fresh runner, and listed once in `conformance_suite!` below,
//! which each backend's module (`pyo3.rs`, …) invokes once with its runner's
//! constructor. A new test is its function and its name in that list.
#![allow(dead_code)]

pub mod calls;
pub mod concurrency;
pub mod errors;
pub mod files;
pub mod first_examples;
pub mod host;
pub mod in_process;
pub mod lifecycle;
pub mod names;
pub mod ordering;
pub mod output;
pub mod streams;
pub mod sync_twins;
pub mod timeouts;
pub mod values;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Instantiates every conformance test for one backend, in the module that
/// invokes it, with runners from `$make_runner`: the full path of a
/// `fn() -> async_py::PyRunner` (`crate::pyo3::make_runner`).
#[macro_export]
macro_rules! conformance_suite {
    ($make_runner:path) => {
        $crate::conformance_suite!(@tokio $make_runner;
            values {
                none_round_trips bools_are_checked_before_ints ints_in_i64_and_u64_range
                ints_past_64_bits_are_conversion_errors floats_and_non_finite_floats
                strings_keep_unicode lists_and_tuples_become_arrays sets_become_arrays
                dicts_become_objects_with_str_keys bytes_become_arrays_of_numbers
                other_objects_become_their_str rust_values_arrive_with_python_types
                self_containing_values_are_conversion_errors deep_values_are_conversion_errors
                two_hundred_levels_cross_and_no_more
                lone_surrogates_are_conversion_errors lone_surrogates_in_keys_and_str_are_conversion_errors
                subclasses_cross_as_the_value_they_hold containers_changed_while_read_cross_as_they_were
                objects_of_the_later_rows_cross_as_values later_rows_keep_the_limits
                arguments_nested_past_any_stack_are_conversion_errors
            }
            errors {
                exceptions_arrive_structured_with_traceback display_names_the_exception_type
                syntax_errors_are_python_errors nul_bytes_are_errors deep_recursion_is_a_recursion_error
                eval_of_a_statement_is_a_syntax_error system_exit_is_an_error keyboard_interrupt_is_an_error
                custom_exception_classes_keep_their_name lone_surrogates_in_an_error_arrive_escaped
                deeply_nested_source_never_crashes
            }
            names {
                dotted_names_resolve_through_attributes builtins_are_found missing_names_are_name_errors
                missing_attributes_are_attribute_errors calling_a_non_callable_is_a_type_error
            }
            files {
                run_file_puts_its_folder_first_on_sys_path missing_file_is_an_error
                set_venv_adds_site_packages_and_honours_pth_files set_venv_of_a_missing_folder_is_an_error
                set_venv_example_with_a_real_venv run_file_takes_a_name_that_is_not_utf8
                set_venv_of_another_python_version_is_named
            }
            ordering {
                many_tasks_get_their_own_results commands_from_clones_keep_send_order
                dropped_unsent_command_never_runs two_runners_keep_globals_apart
            }
            concurrency {
                coroutines_overlap_at_await_points future_made_in_one_call_is_awaited_in_another
                thousand_sleeping_coroutines_all_finish plain_commands_run_while_coroutines_wait
                coroutine_exceptions_are_structured non_awaitable_result_is_returned_as_is
                a_coroutine_that_exits_fails_only_its_own_call
                background_tasks_run_between_commands servers_answer_between_commands
            }
            calls {
                kwargs_fill_defaults_and_keyword_only_parameters
                a_struct_gives_one_keyword_argument_per_field typed_results_read_into_serde_types
                a_result_that_does_not_fit_names_where arguments_that_cannot_cross_name_themselves
                bytes_cross_as_bytes_both_ways awaitable_results_are_awaited_on_the_runner_s_loop
                a_generator_result_says_to_use_stream a_call_s_limit_overrides_the_runner_s
                a_dropped_call_cancels_its_coroutine
            }
            output {
                a_call_captures_print_and_stderr_and_keeps_its_value an_exec_captures_its_output
                a_captured_command_that_fails_returns_its_error uncaptured_commands_are_unaffected
                two_captured_coroutines_keep_their_own_output
                a_flood_is_cut_at_the_cap_and_the_runner_answers_after
            }
            streams {
                items_arrive_in_order the_first_item_comes_before_the_generator_finishes
                an_exception_ends_the_stream_with_one_error dropping_a_stream_closes_its_generator
                python_runs_only_a_window_ahead_of_a_slow_consumer other_commands_run_between_items
                items_are_read_into_their_type a_result_that_is_not_iterable_is_a_conversion_error
                each_item_has_the_call_s_limit async_generators_stream_on_the_runner_s_loop
                stop_ends_open_streams coroutines_go_on_while_a_stream_makes_items
                a_stream_dropped_before_it_opened_never_runs
            }
            lifecycle { stop_makes_later_commands_stopped stop_is_idempotent stop_ends_pending_coroutines }
            first_examples { greet_counter add_and_sleep_overlap }
            timeouts {
                runaway_loop_times_out_and_runner_recovers timeout_is_not_swallowed_by_except_exception
                blocking_call_past_its_limit_does_not_poison_the_next_command
                coroutine_past_its_limit_times_out handles_keep_their_own_limits
                a_coroutine_past_its_limit_is_a_timeout_however_it_ends
                a_coroutine_limit_counts_from_its_start limits_of_any_size_never_panic
            }
        );
        $crate::conformance_suite!(@plain $make_runner;
            sync_twins {
                twins_work_from_plain_threads twins_work_inside_a_current_thread_runtime
                twins_work_inside_a_multi_thread_runtime every_twin_does_its_job
            }
            first_examples { five_threads_add_to_x }
            calls { wait_is_safe_in_any_context }
            streams { blocking_iter_reads_from_a_plain_thread }
        );
    };
    (@tokio $make_runner:path; $($module:ident { $($name:ident)* })*) => {
        $(
            mod $module {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        $crate::conformance::$module::$name($make_runner()).await;
                    }
                )*
            }
        )*
    };
    (@plain $make_runner:path; $($module:ident { $($name:ident)* })*) => {
        mod blocking {
            $(
                mod $module {
                    $(
                        #[test]
                        fn $name() {
                            $crate::conformance::$module::$name($make_runner());
                        }
                    )*
                }
            )*
        }
    };
}

/// Instantiates the tests every in-process backend shares
/// (`conformance/in_process.rs`) for the backend a builder method picks.
#[macro_export]
macro_rules! in_process_suite {
    ($backend:ident) => {
        $crate::in_process_suite!($backend:
            startup_code_runs_before_the_first_command failing_startup_code_is_a_startup_error
            builder_timeout_applies_to_every_command builder_venv_puts_site_packages_on_sys_path
            dropping_the_last_handle_ends_the_runner
        );
    };
    ($backend:ident: $($name:ident)*) => {
        mod in_process {
            $(
                #[test]
                fn $name() {
                    $crate::conformance::in_process::$name(async_py::PyRunner::builder().$backend());
                }
            )*
        }
    };
}

/// Instantiates the `on_output` tests (`conformance/output.rs`) for one
/// backend, with builders from `$builder`: the full path of a
/// `fn() -> async_py::PyRunnerBuilder`.
#[macro_export]
macro_rules! output_suite {
    ($builder:path) => {
        $crate::output_suite!($builder:
            lines_reach_the_callback_with_their_stream
            a_captured_command_s_output_does_not_reach_the_callback
            a_long_line_arrives_in_capped_pieces nothing_is_lost_at_stop
            a_reply_comes_after_its_output a_panicking_callback_loses_only_its_line
        );
    };
    ($builder:path: $($name:ident)*) => {
        mod on_output {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::conformance::output::$name($builder()).await;
                }
            )*
        }
    };
}

/// Instantiates the host function tests (`conformance/host.rs`) for one
/// backend, with builders from `$builder`: the full path of a
/// `fn() -> async_py::PyRunnerBuilder`. A backend that cannot run some of
/// them lists the ones it runs after a colon.
#[macro_export]
macro_rules! host_suite {
    ($builder:path) => {
        $crate::host_suite!($builder:
            sync_functions_take_args_and_kwargs results_cross_by_the_value_table
            errors_and_panics_raise_host_error an_unknown_name_is_an_attribute_error
            a_runner_without_host_functions_has_the_module progress_arrives_in_order
            nested_commands_run_before_the_host_function_returns
            commands_from_other_clones_wait_for_the_command_that_runs a_timeout_counts_host_time
            startup_code_may_call_host_functions_that_send_commands
            async_functions_are_awaited async_functions_overlap
            nested_commands_from_an_async_function a_timeout_drops_an_async_host_future
            an_async_function_may_send_commands_before_its_first_await
        );
    };
    ($builder:path: $($name:ident)*) => {
        mod host {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::conformance::host::$name($builder()).await;
                }
            )*

            #[test]
            fn bad_names_fail_build() {
                $crate::conformance::host::bad_names_fail_build($builder());
            }
        }
    };
}

/// A new runner of `runner`'s backend, made as that backend's module makes
/// the runners it gives the conformance tests.
pub fn another_runner(runner: &async_py::PyRunner) -> async_py::PyRunner {
    match runner.backend() {
        #[cfg(feature = "pyo3")]
        async_py::Backend::PyO3 => crate::pyo3::make_runner(),
        #[cfg(feature = "subprocess")]
        async_py::Backend::Subprocess => crate::subprocess::make_runner(),
        #[cfg(feature = "rustpython")]
        async_py::Backend::RustPython => crate::rustpython::make_runner(),
        #[allow(unreachable_patterns)]
        other => unreachable!("a runner of a backend not compiled in: {other:?}"),
    }
}

/// In-process runners share one `sys.path`; tests that change it take this
/// lock so that they do not see each other's entries. One lock for the
/// whole binary: the PyO3 and RustPython tests now share a process.
pub static SYS_PATH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// For tests outside a runtime; async tests use `SYS_PATH.lock().await`.
pub fn sys_path_lock() -> tokio::sync::MutexGuard<'static, ()> {
    SYS_PATH.blocking_lock()
}

/// The interpreter that test venvs are made with: the one the in-process
/// backend links (`PYO3_PYTHON`, else `python3`).
pub fn base_python() -> PathBuf {
    std::env::var_os("PYO3_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Every CPython minor version the tests need (3.8, 3.10 to 3.13) with its
/// interpreter under pyenv's root; a missing one fails the test loudly.
pub fn installed_cpythons() -> Vec<(String, PathBuf)> {
    let root = Command::new("pyenv")
        .arg("root")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| format!("{}/.pyenv", std::env::var("HOME").unwrap()));
    ["3.8", "3.10", "3.11", "3.12", "3.13"]
        .into_iter()
        .map(|minor| {
            let python = std::fs::read_dir(PathBuf::from(&root).join("versions"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| {
                    let name = path.file_name().unwrap().to_string_lossy().to_string();
                    name == minor || name.starts_with(&format!("{minor}."))
                })
                .map(|path| path.join("bin/python3"))
                .find(|python| python.exists())
                .unwrap_or_else(|| {
                    panic!("CPython {minor} was not found under {root}/versions: install it")
                });
            (minor.to_string(), python)
        })
        .collect()
}

/// Makes a uv venv of `python` at `dir/.venv`, with six 1.16.0 installed
/// from the package index; returns the venv's folder.
pub fn uv_venv_with_six(dir: &Path, python: &Path) -> PathBuf {
    let venv = dir.join(".venv");
    uv(
        dir,
        &[
            "venv",
            "--python",
            python.to_str().unwrap(),
            venv.to_str().unwrap(),
        ],
    );
    uv(
        dir,
        &[
            "pip",
            "install",
            "--python",
            venv.join("bin/python").to_str().unwrap(),
            "six==1.16.0",
        ],
    );
    venv
}

/// Makes a venv with `python -m venv --without-pip` in `dir`, then returns
/// its site-packages folder.
pub fn make_venv(python: &Path, dir: &Path) -> PathBuf {
    let status = Command::new(python)
        .args(["-m", "venv", "--without-pip"])
        .arg(dir)
        .status()
        .expect("python can be started to make a venv");
    assert!(
        status.success(),
        "python -m venv failed for {}",
        dir.display()
    );
    let output = Command::new(dir.join("bin").join("python"))
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .expect("the venv's python starts");
    assert!(output.status.success());
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// The backends without an asyncio event loop (RustPython) answer every
/// `call_async_function` with `Unsupported`. A coroutine test asks this
/// first: there it checks that answer and ends, everywhere else it goes on.
pub async fn runs_coroutines(runner: &async_py::PyRunner) -> bool {
    if runner.backend() != async_py::Backend::RustPython {
        return true;
    }
    runner
        .run("async def _probe():\n    return 1")
        .await
        .unwrap();
    refuses_coroutines(runner.call_async_function("_probe", vec![]).await)
}

/// [`runs_coroutines`] for the blocking tests.
pub fn runs_coroutines_sync(runner: &async_py::PyRunner) -> bool {
    if runner.backend() != async_py::Backend::RustPython {
        return true;
    }
    runner
        .run_sync("async def _probe():\n    return 1")
        .unwrap();
    refuses_coroutines(runner.call_async_function_sync("_probe", vec![]))
}

fn refuses_coroutines(reply: Result<serde_json::Value, async_py::PyRunnerError>) -> bool {
    match reply {
        Err(async_py::PyRunnerError::Unsupported(message)) => {
            assert!(
                message.contains("pyo3") && message.contains("subprocess"),
                "the message names the backends that run coroutines: {message}"
            );
            false
        }
        other => panic!("expected Unsupported for a coroutine, got {other:?}"),
    }
}

/// Runs `uv` with these arguments in `dir`; a failure fails the test,
/// saying what uv said.
pub fn uv<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(dir: &Path, args: &[S]) {
    let output = Command::new("uv")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|err| {
            panic!("uv could not be run ({err}); install it with `pip install uv`")
        });
    assert!(
        output.status.success(),
        "uv {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A uv venv with numpy from the package index, made once and kept under
/// the target folder (`.ci/run` makes it before the tests). Made with the
/// interpreter the in-process backend links, so both CPython backends can
/// use it.
pub fn numpy_venv() -> PathBuf {
    static MADE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _made = MADE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("numpy-venv");
    if venv.join("numpy-installed").exists() {
        return venv;
    }
    // Built beside and renamed into place: another test binary may be at
    // the same work, and neither may see a half-made venv.
    let building = venv.with_extension(format!("building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let here = Path::new(".");
    uv(
        here,
        &[
            "venv".as_ref(),
            "--quiet".as_ref(),
            "--python".as_ref(),
            base_python().as_os_str(),
            building.as_os_str(),
        ],
    );
    uv(
        here,
        &[
            "pip".as_ref(),
            "install".as_ref(),
            "--quiet".as_ref(),
            "--python".as_ref(),
            building.join("bin/python").as_os_str(),
            "numpy".as_ref(),
        ],
    );
    std::fs::write(building.join("numpy-installed"), "").unwrap();
    if std::fs::rename(&building, &venv).is_err() {
        // Another binary put its own in place first.
        let _ = std::fs::remove_dir_all(&building);
    }
    assert!(venv.join("numpy-installed").exists());
    venv
}

/// A CPython of another minor version than the one the tests run, from
/// pyenv, to make a venv the running interpreter must refuse.
pub fn other_cpython() -> (PathBuf, String) {
    let root = Command::new("pyenv")
        .arg("root")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .unwrap_or_else(|| Path::new(&std::env::var("HOME").unwrap()).join(".pyenv"));
    let running = Command::new(base_python())
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .expect("the base python starts");
    let running = String::from_utf8_lossy(&running.stdout).trim().to_owned();
    for candidate in ["3.12", "3.13", "3.10", "3.8"] {
        if candidate == running {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(root.join("versions")) else {
            break;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let python = entry.path().join("bin/python3");
            if name.starts_with(&format!("{candidate}.")) && python.exists() {
                return (python, candidate.to_owned());
            }
        }
    }
    panic!(
        "no CPython other than {running} under {}: these tests need one (pyenv install 3.12)",
        root.display()
    );
}
