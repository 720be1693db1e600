//! Correlator state-machine tests on synthetic probe streams (no kernel needed).

use super::*;

mod matrix;

const PID: u32 = 100;
const MAIN: u32 = 100;
const STREAM: u64 = 0x5000;

/// One item of a probe stream: a call record, or a stack walked at a call's entry.
enum Item {
    Call(CallEvent),
    Walk {
        tid: u32,
        entry_ns: u64,
        walk_ns: u64,
    },
    /// A symbolized stack walked at a call's entry.
    Stack(Box<PyStack>),
}

/// Builds a probe stream the way the kernel side reports it.
struct Script {
    evs: Vec<Item>,
}

impl Script {
    fn new() -> Self {
        Self { evs: Vec::new() }
    }
    fn entry(&mut self, ts_us: u64, tid: u32, api: ApiId, args: &[u64]) -> &mut Self {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        self.evs.push(Item::Call(CallEvent {
            ts_ns: ts_us * 1000,
            pid: PID,
            tid,
            api,
            phase: CallPhase::Entry { args: a },
        }));
        self
    }
    fn ret(&mut self, ts_us: u64, tid: u32, api: ApiId, ret: u64, out: Option<u64>) -> &mut Self {
        self.evs.push(Item::Call(CallEvent {
            ts_ns: ts_us * 1000,
            pid: PID,
            tid,
            api,
            phase: CallPhase::Return { ret, out },
        }));
        self
    }
    /// A stack walk of `walk_us` at the entry made at `entry_us`.
    fn walk(&mut self, entry_us: u64, tid: u32, walk_us: u64) -> &mut Self {
        self.evs.push(Item::Walk {
            tid,
            entry_ns: entry_us * 1000,
            walk_ns: walk_us * 1000,
        });
        self
    }
    /// The stack walked at `tid`'s call of `api` entered at `entry_us`, frames (file,
    /// qualname) innermost first.
    fn stack(&mut self, entry_us: u64, tid: u32, api: ApiId, frames: &[(&str, &str)]) -> &mut Self {
        self.evs.push(Item::Stack(Box::new(matrix::stack(
            entry_us, tid, api, frames,
        ))));
        self
    }
    /// A runtime call and its nested driver twin, entry only.
    fn rt_drv(&mut self, ts_us: u64, rt: ApiId, drv: ApiId, args: &[u64]) -> &mut Self {
        self.entry(ts_us, MAIN, rt, args)
            .entry(ts_us + 1, MAIN, drv, args)
    }
    fn run(&self, timing: TimingMode, kernels: bool) -> (Vec<Correlated>, CorrelatorStats) {
        let mut c = Correlator::new(timing, kernels);
        let mut out = Vec::new();
        for item in &self.evs {
            match item {
                Item::Call(ev) => c.handle(*ev, &mut |r| out.push(r)),
                Item::Walk {
                    tid,
                    entry_ns,
                    walk_ns,
                } => c.walked(PID, *tid, *entry_ns, *walk_ns),
                Item::Stack(st) => c.python_stack(st, &mut |r| out.push(r)),
            }
        }
        c.finish(&mut |r| out.push(r));
        (out, c.stats)
    }
}

fn steps(out: &[Correlated]) -> Vec<Step> {
    out.iter()
        .filter_map(|r| {
            if let Correlated::Step(s) = r {
                Some(s.clone())
            } else {
                None
            }
        })
        .collect()
}

/// Capture one graph: begin, end (graph 0xg), instantiate (exec 0xe).
fn capture(s: &mut Script, t: u64, graph: u64, exec: u64) {
    s.entry(t, MAIN, ApiId::cudaStreamBeginCapture, &[STREAM, 0])
        .entry(t + 10, MAIN, ApiId::cudaStreamEndCapture, &[STREAM, 0x7ff0])
        .ret(t + 20, MAIN, ApiId::cudaStreamEndCapture, 0, Some(graph))
        .entry(
            t + 30,
            MAIN,
            ApiId::cudaGraphInstantiateWithFlags,
            &[0x7ff8, graph, 0],
        )
        .entry(
            t + 31,
            MAIN,
            ApiId::cuGraphInstantiateWithFlags,
            &[0x7ff8, graph, 0],
        )
        .ret(
            t + 40,
            MAIN,
            ApiId::cuGraphInstantiateWithFlags,
            0,
            Some(exec),
        )
        .ret(
            t + 41,
            MAIN,
            ApiId::cudaGraphInstantiateWithFlags,
            0,
            Some(exec),
        );
}

/// One vLLM-like step launch: H2D input copy, graph replay, D2H output copy, event record.
fn launch_step(s: &mut Script, t: u64, exec: u64, event: u64) {
    s.rt_drv(
        t,
        ApiId::cudaMemcpyAsync,
        ApiId::cuMemcpyHtoDAsync_v2,
        &[1, 2, 4096, 1, STREAM],
    )
    .rt_drv(
        t + 10,
        ApiId::cudaGraphLaunch,
        ApiId::cuGraphLaunch,
        &[exec, STREAM],
    )
    .rt_drv(
        t + 20,
        ApiId::cudaMemcpyAsync,
        ApiId::cuMemcpyDtoHAsync_v2,
        &[3, 4, 1024, 2, STREAM],
    )
    .rt_drv(
        t + 30,
        ApiId::cudaEventRecordWithFlags,
        ApiId::cuEventRecordWithFlags,
        &[event, STREAM, 0],
    );
}

fn sync_event(s: &mut Script, tid: u32, entry: u64, ret: u64, event: u64) {
    s.entry(entry, tid, ApiId::cudaEventSynchronize, &[event])
        .entry(entry + 1, tid, ApiId::cuEventSynchronize, &[event])
        .ret(ret - 1, tid, ApiId::cuEventSynchronize, 0, None)
        .ret(ret, tid, ApiId::cudaEventSynchronize, 0, None);
}

#[test]
fn async_depth_two_matches_waits_by_event_handle() {
    let mut s = Script::new();
    capture(&mut s, 0, 0xa0, 0xe0);
    // step 0 launched at 1000, step 1 at 2000, then wait for step 0 (blocks until 3000), ...
    launch_step(&mut s, 1000, 0xe0, 0xee0);
    launch_step(&mut s, 2000, 0xe0, 0xee1);
    sync_event(&mut s, MAIN, 2100, 3000, 0xee0);
    launch_step(&mut s, 3100, 0xe0, 0xee0);
    sync_event(&mut s, MAIN, 3200, 5000, 0xee1);
    sync_event(&mut s, MAIN, 5100, 7000, 0xee0);
    let (out, stats) = s.run(TimingMode::Events, false);
    let st = steps(&out);
    assert_eq!(st.len(), 3, "{st:#?}");
    // step 0: GPU from its launch (1000) to the wait return (3000)
    assert_eq!(st[0].gpu_start_ns, 1_000_000);
    assert_eq!(st[0].forward_ns(), 2_000_000);
    // step 1: queued behind step 0, so its GPU time starts at step 0's completion (3000)
    assert_eq!(st[1].gpu_start_ns, 3_000_000);
    assert_eq!(st[1].forward_ns(), 2_000_000);
    assert_eq!(st[2].forward_ns(), 2_000_000);
    for (i, step) in st.iter().enumerate() {
        assert_eq!(step.index, i as u64);
        assert_eq!(step.completion, Completion::Exact);
        assert_eq!(
            step.graph_launches, 1,
            "runtime+driver graph launch counted once"
        );
        assert_eq!(step.graph_ids, vec![0]);
        assert_eq!(step.h2d_bytes, 4096);
        assert_eq!(step.d2h_bytes, 1024);
        assert_eq!(step.kernel_launches, None);
        assert_eq!(step.cpu_launch_ns(), 30_000);
    }
    assert_eq!(stats.incomplete_steps, 0);
    assert_eq!(stats.nested_calls, 4 * 3 + 1 + 3); // step calls, instantiate, event syncs
    let replays = out
        .iter()
        .filter(|r| matches!(r, Correlated::GraphReplay(_)))
        .count();
    assert_eq!(replays, 3);
}

#[test]
fn short_wait_is_an_upper_bound_at_its_return() {
    let mut s = Script::new();
    capture(&mut s, 0, 0xa0, 0xe0);
    launch_step(&mut s, 1000, 0xe0, 0xee0);
    // 43 µs: what a sync on a long-finished event took on the H100 after a CPU gap.
    sync_event(&mut s, MAIN, 5000, 5043, 0xee0);
    let (out, _) = s.run(TimingMode::Events, false);
    let st = steps(&out);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].completion, Completion::UpperBound);
    assert_eq!(st[0].completion_ns, 5_043_000);
}

#[test]
fn the_tracers_own_stack_walk_inside_a_wait_is_not_blocking() {
    // Both waits last 120 µs; in the second, 40 µs of it were the walk at its entry.
    for (walk_us, completion, wait_ns) in [
        (0, Completion::Exact, 120_000),
        (40, Completion::UpperBound, 80_000),
    ] {
        let mut s = Script::new();
        capture(&mut s, 0, 0xa0, 0xe0);
        launch_step(&mut s, 1000, 0xe0, 0xee0);
        s.entry(5000, MAIN, ApiId::cudaEventSynchronize, &[0xee0]);
        if walk_us > 0 {
            s.walk(5000, MAIN, walk_us);
        }
        s.ret(5120, MAIN, ApiId::cudaEventSynchronize, 0, None);
        let (out, _) = s.run(TimingMode::Events, false);
        let st = steps(&out);
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].completion, completion, "walk {walk_us} µs");
        assert_eq!(st[0].sync_wait_ns, wait_ns);
        let call = out.iter().find_map(|r| match r {
            Correlated::Call(c) if c.api == ApiId::cudaEventSynchronize => Some(c.duration_ns),
            _ => None,
        });
        assert_eq!(call, Some(Some(wait_ns)));
    }
}

#[test]
fn capture_instantiate_replay_chain_assigns_graph_ids() {
    let mut s = Script::new();
    capture(&mut s, 0, 0xa0, 0xe0);
    capture(&mut s, 100, 0xa1, 0xe1);
    launch_step(&mut s, 1000, 0xe1, 0xee0);
    sync_event(&mut s, MAIN, 1100, 2000, 0xee0);
    // An executable instantiated before attach: new id, counted.
    launch_step(&mut s, 3000, 0xbad, 0xee0);
    sync_event(&mut s, MAIN, 3100, 4000, 0xee0);
    let (out, stats) = s.run(TimingMode::Events, false);
    let captures: Vec<&GraphCapture> = out
        .iter()
        .filter_map(|r| {
            if let Correlated::GraphCaptured(c) = r {
                Some(c)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(captures.len(), 3);
    assert_eq!(captures[0].begin_ns, Some(0));
    assert_eq!(captures[0].end_ns, Some(20_000));
    assert_eq!(captures[1].graph_handle, Some(0xa1));
    assert_eq!(captures[2].begin_ns, None);
    let inst = out
        .iter()
        .filter(|r| matches!(r, Correlated::GraphInstantiated(_)))
        .count();
    assert_eq!(inst, 2, "runtime+driver instantiation counted once");
    let st = steps(&out);
    assert_eq!(st[0].graph_ids, vec![1]);
    assert_eq!(st[1].graph_ids, vec![2]);
    assert_eq!(stats.unknown_graph_execs, 1);
}

/// vLLM V1 with async scheduling: the inputs are copied and `prepare_inputs_event` recorded,
/// then the forward and the output copy are launched and the step's event recorded; the next
/// `execute_model` first synchronizes `prepare_inputs_event`, and the engine waits for the
/// step after that. The input event's wait is not a step of its own.
#[test]
fn input_event_waited_at_the_next_step_start_merges_into_its_step() {
    let mut s = Script::new();
    for (i, t) in [1000u64, 1100].into_iter().enumerate() {
        if i > 0 {
            sync_event(&mut s, MAIN, t - 10, t - 9, 0x111);
        }
        s.entry(t, MAIN, ApiId::cudaMemcpyAsync, &[1, 2, 100, 1, STREAM])
            .entry(t + 10, MAIN, ApiId::cudaEventRecord, &[0x111, STREAM])
            .entry(t + 20, MAIN, ApiId::cudaGraphLaunch, &[0xe0, STREAM])
            .entry(t + 30, MAIN, ApiId::cudaMemcpyAsync, &[3, 4, 8, 2, STREAM])
            .entry(
                t + 40,
                MAIN,
                ApiId::cudaEventRecord,
                &[0xee0 + i as u64, STREAM],
            );
    }
    sync_event(&mut s, MAIN, 1200, 3000, 0xee0);
    sync_event(&mut s, MAIN, 3100, 5000, 0xee1);
    let (out, stats) = s.run(TimingMode::Events, false);
    let st = steps(&out);
    assert_eq!(st.len(), 2, "{st:#?}");
    assert_eq!((st[0].start_ns, st[0].h2d_bytes), (1_000_000, 100));
    assert_eq!((st[1].start_ns, st[1].h2d_bytes), (1_100_000, 100));
    assert_eq!(st[0].completion_ns, 3_000_000);
    assert_eq!(stats.input_only_syncs, 1);
}

#[test]
fn direct_driver_calls_count_and_kernel_launches_with_kernels_mode() {
    let mut s = Script::new();
    s.rt_drv(
        1000,
        ApiId::cudaMemcpyAsync,
        ApiId::cuMemcpyHtoDAsync_v2,
        &[1, 2, 100, 1, STREAM],
    );
    for i in 0..5 {
        s.entry(1010 + i, MAIN, ApiId::cuLaunchKernel, &[]);
    }
    s.entry(1020, MAIN, ApiId::cuLaunchKernelEx, &[]);
    // A direct driver graph launch (no runtime call before it) is its own replay.
    s.entry(1030, MAIN, ApiId::cuGraphLaunch, &[0xe5, STREAM]);
    s.rt_drv(
        1040,
        ApiId::cudaEventRecord,
        ApiId::cuEventRecord,
        &[0x111, STREAM],
    );
    sync_event(&mut s, 777, 1050, 2000, 0x111); // waited on by another thread
    let (out, _) = s.run(TimingMode::Events, true);
    let st = steps(&out);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].kernel_launches, Some(6));
    assert_eq!(st[0].graph_launches, 1);
    assert_eq!(st[0].sync_tid, 777);
    assert_eq!(st[0].tid, MAIN);
}

#[test]
fn sync_mode_completes_at_any_blocking_wait() {
    let mut s = Script::new();
    capture(&mut s, 0, 0xa0, 0xe0);
    launch_step(&mut s, 1000, 0xe0, 0xee0);
    s.entry(1100, MAIN, ApiId::cudaStreamSynchronize, &[STREAM])
        .entry(1101, MAIN, ApiId::cuStreamSynchronize, &[STREAM])
        .ret(1999, MAIN, ApiId::cuStreamSynchronize, 0, None)
        .ret(2000, MAIN, ApiId::cudaStreamSynchronize, 0, None);
    launch_step(&mut s, 3000, 0xe0, 0xee0);
    s.entry(3100, MAIN, ApiId::cudaDeviceSynchronize, &[]).ret(
        3105,
        MAIN,
        ApiId::cudaDeviceSynchronize,
        0,
        None,
    );
    let (out, _) = s.run(TimingMode::Sync, false);
    let st = steps(&out);
    assert_eq!(st.len(), 2);
    assert_eq!(
        (st[0].completion, st[0].completion_ns),
        (Completion::Exact, 2_000_000)
    );
    // A 5 µs device sync 70 µs after the step's last launch: the GPU finished in between.
    assert_eq!(
        (
            st[1].completion,
            st[1].completion_ns,
            st[1].completion_lower_ns
        ),
        (Completion::Bracketed, 3_105_000, 3_030_000)
    );
    // events mode ignores stream/device waits: nothing completes
    let (out, stats) = s.run(TimingMode::Events, false);
    assert!(steps(&out).is_empty());
    assert_eq!(stats.incomplete_steps, 2);
}

#[test]
fn returns_without_entries_are_counted_not_guessed() {
    let mut s = Script::new();
    s.ret(10, MAIN, ApiId::cudaEventSynchronize, 0, None);
    s.entry(20, MAIN, ApiId::cudaEventSynchronize, &[0x1]);
    let (out, stats) = s.run(TimingMode::Events, false);
    assert_eq!(stats.unmatched_returns, 1);
    assert_eq!(stats.calls_open_at_end, 1);
    assert!(steps(&out).is_empty());
}

#[test]
fn late_driver_call_after_entry_only_runtime_call_is_not_nested() {
    let mut s = Script::new();
    s.entry(1000, MAIN, ApiId::cudaGraphLaunch, &[0xe0, STREAM]);
    // no twin fired (e.g. not exported); 30 ms later the app launches through the driver
    s.entry(31_000, MAIN, ApiId::cuGraphLaunch, &[0xe0, STREAM]);
    s.rt_drv(
        31_100,
        ApiId::cudaEventRecord,
        ApiId::cuEventRecord,
        &[0x1, STREAM],
    );
    sync_event(&mut s, MAIN, 31_200, 33_000, 0x1);
    let (out, stats) = s.run(TimingMode::Events, false);
    assert_eq!(steps(&out)[0].graph_launches, 2);
    assert_eq!(stats.nested_calls, 2); // event record + event wait twins only
}

#[test]
fn a_wait_completes_the_step_its_event_marked_when_the_wait_began() {
    let mut s = Script::new();
    launch_step(&mut s, 1000, 0xe0, 0xee0);
    // Thread 777 starts waiting for 0xee0; meanwhile the launcher records the same event
    // handle again for the next step; the wait returns after that.
    s.entry(1100, 777, ApiId::cudaEventSynchronize, &[0xee0]);
    launch_step(&mut s, 1200, 0xe0, 0xee0);
    s.ret(3000, 777, ApiId::cudaEventSynchronize, 0, None);
    sync_event(&mut s, 777, 3100, 5000, 0xee0);
    let (out, stats) = s.run(TimingMode::Events, false);
    let st = steps(&out);
    assert_eq!(st.len(), 2, "{st:#?}");
    assert_eq!(
        (st[0].start_ns, st[0].completion_ns),
        (1_000_000, 3_000_000)
    );
    assert_eq!(
        (st[1].start_ns, st[1].completion_ns),
        (1_200_000, 5_000_000)
    );
    assert_eq!(stats.repeat_syncs, 0);
}

#[test]
fn polls_complete_steps_only_on_events_that_are_waited_on() {
    let mut s = Script::new();
    launch_step(&mut s, 1000, 0xe0, 0xee0);
    // An allocator-style poll of an event recorded after the step's copies: ignored.
    s.rt_drv(
        1040,
        ApiId::cudaEventRecord,
        ApiId::cuEventRecord,
        &[0xa110c, STREAM],
    );
    s.entry(1050, MAIN, ApiId::cudaEventQuery, &[0xa110c]).ret(
        1051,
        MAIN,
        ApiId::cudaEventQuery,
        0,
        None,
    );
    sync_event(&mut s, MAIN, 1100, 3000, 0xee0);
    let (out, stats) = s.run(TimingMode::Events, false);
    let st = steps(&out);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].completion, Completion::Exact);
    assert_eq!(stats.ignored_event_polls, 1);
}

#[test]
fn a_failed_capture_records_no_graph_and_ends_the_capture() {
    let mut s = Script::new();
    s.entry(0, MAIN, ApiId::cudaStreamBeginCapture, &[STREAM, 0])
        .entry(10, MAIN, ApiId::cudaStreamEndCapture, &[STREAM, 0x7ff0])
        .ret(20, MAIN, ApiId::cudaStreamEndCapture, 901, Some(0xdead));
    // Work after the failed capture is step work, not captured work.
    launch_step(&mut s, 1000, 0xe0, 0xee0);
    sync_event(&mut s, MAIN, 1100, 3000, 0xee0);
    let (out, stats) = s.run(TimingMode::Events, false);
    assert_eq!(stats.failed_captures, 1);
    let captured = out
        .iter()
        .filter(|r| matches!(r, Correlated::GraphCaptured(c) if c.end_ns.is_some()))
        .count();
    assert_eq!(captured, 0);
    assert_eq!(steps(&out).len(), 1);
}

#[test]
fn target_controlled_byte_counts_saturate() {
    let mut s = Script::new();
    s.rt_drv(
        1000,
        ApiId::cudaMemcpyAsync,
        ApiId::cuMemcpyHtoDAsync_v2,
        &[1, 2, u64::MAX, 1, STREAM],
    )
    .rt_drv(
        1001,
        ApiId::cudaMemcpyAsync,
        ApiId::cuMemcpyHtoDAsync_v2,
        &[1, 2, u64::MAX, 1, STREAM],
    )
    .rt_drv(
        1002,
        ApiId::cudaMemcpyAsync,
        ApiId::cuMemcpyDtoHAsync_v2,
        &[3, 4, 8, 2, STREAM],
    )
    .rt_drv(
        1003,
        ApiId::cudaEventRecord,
        ApiId::cuEventRecord,
        &[0x1, STREAM],
    );
    sync_event(&mut s, MAIN, 1100, 3000, 0x1);
    let (out, _) = s.run(TimingMode::Events, false);
    assert_eq!(steps(&out)[0].h2d_bytes, u64::MAX);
}

/// PyTorch's pinned-memory allocator records an event after each copy from or to pinned
/// memory and later polls it; those records must neither split vLLM's step nor complete it.
#[test]
fn allocator_events_between_copies_do_not_split_or_complete_steps() {
    let mut s = Script::new();
    for step in 0..3u64 {
        let t = 1000 + step * 5000;
        for i in 0..3 {
            // input copy, then the allocator's bookkeeping event for that pinned block
            s.entry(
                t + i * 10,
                MAIN,
                ApiId::cudaMemcpyAsync,
                &[1, 2, 64, 1, STREAM],
            )
            .entry(
                t + i * 10 + 1,
                MAIN,
                ApiId::cudaEventRecord,
                &[0xa000 + i, STREAM],
            );
        }
        s.entry(t + 100, MAIN, ApiId::cudaGraphLaunch, &[0xe0, STREAM])
            .entry(
                t + 110,
                MAIN,
                ApiId::cudaMemcpyAsync,
                &[3, 4, 32, 2, STREAM],
            )
            .entry(t + 111, MAIN, ApiId::cudaEventRecord, &[0xa00f, STREAM])
            .entry(
                t + 120,
                MAIN,
                ApiId::cudaEventRecordWithFlags,
                &[0xc0 + step, STREAM, 0],
            );
        // the allocator polls its events: done, but never waited on
        for i in 0..3 {
            s.entry(t + 130 + i, MAIN, ApiId::cudaEventQuery, &[0xa000 + i])
                .ret(t + 131 + i, MAIN, ApiId::cudaEventQuery, 0, None);
        }
        if step > 0 {
            sync_event(&mut s, MAIN, t + 200, t + 2000, 0xc0 + step - 1);
        }
    }
    sync_event(&mut s, MAIN, 20_000, 22_000, 0xc2);
    let (out, stats) = s.run(TimingMode::Events, false);
    let st = steps(&out);
    assert_eq!(st.len(), 3, "{st:#?}");
    for (i, step) in st.iter().enumerate() {
        assert_eq!(
            step.start_ns,
            (1000 + i as u64 * 5000) * 1000,
            "step {i} starts at its first input copy"
        );
        assert_eq!(
            (step.h2d_bytes, step.d2h_bytes, step.graph_launches),
            (192, 32, 1)
        );
        assert_eq!(step.completion, Completion::Exact);
    }
    assert_eq!(stats.ignored_event_polls, 9);
    assert_eq!(stats.incomplete_steps, 0);
}

/// A waiter descheduled in its wait returns late: its exact row is long by that much, but the
/// next step's bounds must not take that return as a floor for its GPU start (the GPU ran the
/// next step meanwhile).
#[test]
fn a_late_waker_does_not_break_the_next_steps_bounds() {
    let mut s = Script::new();
    launch_step(&mut s, 1000, 0xe0, 0xee0);
    launch_step(&mut s, 1100, 0xe0, 0xee1);
    // Step 0 finished at 2000 and step 1 at 2600 on the GPU; the waiter woke at 2700.
    sync_event(&mut s, MAIN, 1140, 2700, 0xee0);
    sync_event(&mut s, MAIN, 2710, 2712, 0xee1);
    let (out, _) = s.run(TimingMode::Events, false);
    let st = steps(&out);
    assert_eq!(st[0].completion, Completion::Exact);
    assert_eq!(st[1].completion, Completion::UpperBound);
    assert!(st[1].forward_ns() >= 600_000, "{:?}", st[1]);
    assert!(st[1].gpu_time_lower_ns() <= 600_000, "{:?}", st[1]);
}
