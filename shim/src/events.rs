//! The runtime's lifecycle events as containerd's task events (topic and message).

use bazaar_runtime::events::Event;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;

use crate::convert::timestamp;

/// The topic and message containerd expects for one of the runtime's events.
pub fn to_containerd(event: Event) -> (&'static str, Box<dyn MessageDyn>) {
    match event {
        Event::Created { container_id, bundle, pid, stdio } => {
            let mut io = TaskIO::new();
            io.stdin = stdio.stdin;
            io.stdout = stdio.stdout;
            io.stderr = stdio.stderr;
            io.terminal = stdio.terminal;
            let mut msg = TaskCreate::new();
            msg.container_id = container_id;
            msg.bundle = bundle;
            msg.pid = pid;
            msg.io = Some(io).into();
            (topics::TASK_CREATE_EVENT_TOPIC, Box::new(msg))
        }
        Event::Started { container_id, pid } => {
            let mut msg = TaskStart::new();
            msg.container_id = container_id;
            msg.pid = pid;
            (topics::TASK_START_EVENT_TOPIC, Box::new(msg))
        }
        Event::ExecAdded { container_id, exec_id } => {
            let mut msg = TaskExecAdded::new();
            msg.container_id = container_id;
            msg.exec_id = exec_id;
            (topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(msg))
        }
        Event::ExecStarted { container_id, exec_id, pid } => {
            let mut msg = TaskExecStarted::new();
            msg.container_id = container_id;
            msg.exec_id = exec_id;
            msg.pid = pid;
            (topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(msg))
        }
        Event::Exited { container_id, exec_id, pid, status, at } => {
            let mut msg = TaskExit::new();
            // containerd identifies the init process's exit by id == container id.
            msg.id = if exec_id.is_empty() { container_id.clone() } else { exec_id };
            msg.container_id = container_id;
            msg.pid = pid;
            msg.exit_status = status;
            msg.exited_at = Some(timestamp(at)).into();
            (topics::TASK_EXIT_EVENT_TOPIC, Box::new(msg))
        }
        Event::Deleted { container_id, pid, status, at } => {
            let mut msg = TaskDelete::new();
            msg.id = container_id.clone();
            msg.container_id = container_id;
            msg.pid = pid;
            msg.exit_status = status;
            msg.exited_at = Some(timestamp(at)).into();
            (topics::TASK_DELETE_EVENT_TOPIC, Box::new(msg))
        }
        Event::Paused { container_id } => {
            let mut msg = TaskPaused::new();
            msg.container_id = container_id;
            (topics::TASK_PAUSED_EVENT_TOPIC, Box::new(msg))
        }
        Event::Resumed { container_id } => {
            let mut msg = TaskResumed::new();
            msg.container_id = container_id;
            (topics::TASK_RESUMED_EVENT_TOPIC, Box::new(msg))
        }
        Event::Oom { container_id } => {
            let mut msg = TaskOOM::new();
            msg.container_id = container_id;
            (topics::TASK_OOM_EVENT_TOPIC, Box::new(msg))
        }
    }
}
