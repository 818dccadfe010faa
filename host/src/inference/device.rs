//! Which burn backend runs the models; only the entry point chooses.

use burn::tensor::Device;

use super::ModelError;

/// Which burn backend runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// burn's `flex` CPU backend.
    #[default]
    Cpu,
    /// burn's wgpu backend (Vulkan, Metal, DX12; lavapipe on machines
    /// without a GPU).
    Wgpu,
    /// wgpu when this build has it and the machine shows a GPU device
    /// (`/dev/nvidia*` or `/dev/dri/renderD*`), else the CPU: a software
    /// Vulkan such as lavapipe is slower than the CPU backend.
    Auto,
}

impl DeviceChoice {
    /// `Auto` made concrete for this build and machine.
    pub fn resolve(self) -> DeviceChoice {
        match self {
            DeviceChoice::Auto if cfg!(feature = "wgpu") && gpu_present() => DeviceChoice::Wgpu,
            DeviceChoice::Auto => DeviceChoice::Cpu,
            other => other,
        }
    }

    /// The burn device.
    pub fn device(self) -> Result<Device, ModelError> {
        match self.resolve() {
            DeviceChoice::Auto => unreachable!("resolved above"),
            DeviceChoice::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            DeviceChoice::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(not(feature = "wgpu"))]
            DeviceChoice::Wgpu => Err(ModelError::NotLoaded(
                "this tessera was built without wgpu; rebuild with `--features wgpu`".into(),
            )),
        }
    }

    /// `cpu` or `wgpu`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Wgpu => "wgpu",
            DeviceChoice::Auto => "auto",
        }
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "wgpu" | "gpu" => Ok(DeviceChoice::Wgpu),
            "auto" => Ok(DeviceChoice::Auto),
            other => Err(format!("unknown device `{other}`; use cpu, wgpu or auto")),
        }
    }
}

/// Whether the machine shows a GPU device node.
fn gpu_present() -> bool {
    let has = |dir: &str, prefix: &str| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
        })
    };
    has("/dev", "nvidia") || has("/dev/dri", "renderD")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        assert_eq!("cpu".parse::<DeviceChoice>(), Ok(DeviceChoice::Cpu));
        assert_eq!("wgpu".parse::<DeviceChoice>(), Ok(DeviceChoice::Wgpu));
        assert_eq!("auto".parse::<DeviceChoice>(), Ok(DeviceChoice::Auto));
        let err = "tpu".parse::<DeviceChoice>().unwrap_err();
        assert!(err.contains("cpu, wgpu or auto"), "{err}");
        #[cfg(not(feature = "wgpu"))]
        {
            assert_eq!(DeviceChoice::Auto.resolve(), DeviceChoice::Cpu);
            let err = DeviceChoice::Wgpu.device().unwrap_err();
            assert!(err.to_string().contains("--features wgpu"), "{err}");
        }
    }
}
